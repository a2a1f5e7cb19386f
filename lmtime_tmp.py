import time
import foundation_dask as fd
from foundation_dask import dspex, scope
from foundation_dask.dspex.datasets import load_sentiment, SENTIMENT_INSTRUCTIONS, sentiment_metric
if __name__ == "__main__":
    client = fd.connect()
    print(client)
    train, dev, test = load_sentiment(n_train=10, n_dev=10, n_test=20)
    lm = dspex.LocalLM(cache=False)
    p = dspex.Predict(dspex.Signature("review -> sentiment", SENTIMENT_INSTRUCTIONS)); p.lm = lm
    for i in range(2):
        t = time.perf_counter(); r = dspex.Evaluate(devset=test, metric=sentiment_metric)(p)
        print("eval", round(time.perf_counter() - t, 2), r.score, r.frame["duration"].round(3).tolist())
    p.demos = train[:4]
    t = time.perf_counter(); r = dspex.Evaluate(devset=test, metric=sentiment_metric)(p)
    print("eval demos", round(time.perf_counter() - t, 2), r.score, r.frame["duration"].round(3).tolist())
    print(client.run(dspex.LocalLM.process_stats))

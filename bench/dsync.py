#!/usr/bin/env python3
"""bench/dsync.py: how fast this machine's disk makes 4 KiB writes durable, from 1, 2 and 4 threads.

Each thread overwrites its own 4 KiB blocks of a preallocated 64 MiB file opened with
O_DIRECT | O_DSYNC (what the durable journal does per group commit) and the script prints writes/s
and the mean latency. Run: python3 bench/dsync.py [directory, default /var/tmp].
"""
import os, mmap, threading, time, sys
path=os.path.join(sys.argv[1] if len(sys.argv) > 1 else '/var/tmp', 'trackd-dsync-test.bin')
fd=os.open(path, os.O_RDWR|os.O_CREAT|os.O_DIRECT|os.O_DSYNC, 0o644)
os.ftruncate(fd, 64<<20)
# prefill so writes are overwrites (no allocation)
buf=mmap.mmap(-1, 4096); buf.write(b'x'*4096)
for i in range(0, 64<<20, 1<<20):
    big=mmap.mmap(-1, 1<<20); big.write(b'y'*(1<<20)); os.pwrite(fd, big, i)
def worker(tid, n, res):
    b=mmap.mmap(-1,4096); b.write(b'z'*4096)
    t=time.perf_counter()
    for i in range(n):
        os.pwrite(fd, b, ((tid*n+i)*4096) % (64<<20))
    res[tid]=time.perf_counter()-t
for threads in (1,2,4,1,2,4):
    n=3000//threads
    res={}
    ts=[threading.Thread(target=worker,args=(k,n,res)) for k in range(threads)]
    t=time.perf_counter()
    [x.start() for x in ts]; [x.join() for x in ts]
    el=time.perf_counter()-t
    print(f"threads={threads} writes/s={threads*n/el:.0f} mean_lat_us={sum(res.values())/threads/n*1e6:.0f}")
os.close(fd); os.unlink(path)

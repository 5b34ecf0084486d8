"""Front ends that serve a potential to other programs; neither touches ACE internals, both call
`potential.evaluate` and read the `Evaluation` (post-processing in `aceserver.evaluation`).

    http/   the HTTP service (FastAPI under uvicorn): JSON and msgpack, model registry, web page
    ipi/    the i-PI socket driver (i-PI, ASE's SocketIOCalculator)
    process.py  process-wide settings of a server: BLAS threads, the frozen heap (`Heap`)
"""

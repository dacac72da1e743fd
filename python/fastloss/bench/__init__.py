"""The benchmarks of fastloss against its peers: one implementation behind
``python -m fastloss bench``, the pytest-benchmark suite in the source tree's ``bench/`` and
``bench/gpu.py``. Nothing else imports it (``python -m fastloss info`` and ``import fastloss``
do not), and this file imports none of its modules, so each one costs only what it needs.

From the ground up, each module importing only those above it in this list:

    ops         the compared operations: arrays read, bytes moved, which ceiling
    inputs      the arrays of one (dtype, N), NumPy or CuPy, and their exact losses
    bandwidth   the STREAM-like read and copy ceilings, measured in the same run
    load        how much of the CPU other processes took while we measured
    errors      ulps and relative errors of a result against the exact value
    peers/      each peer's builders (NumPy, Numba, PyTorch, crysx_nn)
    cases       fastloss's own builders and the table of implementations: make_case
    timing      a case's median time, the inputs rotated through memory
    report      sizes and times as text, the report's header, the markdown results file
    speed       the speed track: every (op, N, implementation) timed, and its table
    stability   the stability track: float32 errors as N grows, bits against threads
    plot        GB/s and errors against N, as a PNG
    cli         ``python -m fastloss bench``: its options and main
"""

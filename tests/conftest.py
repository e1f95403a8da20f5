import os

from hypothesis import HealthCheck, settings

# Deterministic by default (CI and a newcomer see the same examples); PSUM_HYPOTHESIS=dev
# explores new random examples on every run.
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=200,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("PSUM_HYPOTHESIS", "ci"))

# The Triton kernels run through Triton's interpreter on CPU tensors where there is no
# GPU (tests/test_triton.py); this must be set before emulator.triton_kernels is imported.
try:
    import torch

    _gpu = torch.cuda.is_available()
except ImportError:
    _gpu = False
if not _gpu:
    os.environ.setdefault("TRITON_INTERPRET", "1")

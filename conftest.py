import os

os.environ.setdefault("SHARED_SUBSPACE_FAST", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from shared_subspace import runtime  # noqa: E402

runtime.set_threads()

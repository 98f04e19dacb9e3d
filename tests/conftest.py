import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

# Two shared cores: one intra-op thread keeps tests from oversubscribing; results do not depend on it.
torch.set_num_threads(1)

"""A decoder for tests/test_embeddings.py that kills its worker process on files named *crash*.

A module of its own (not the test file) so that worker processes can import it without torch.
"""

import os
import signal

from zstag import workers


def decode(path, fe_dict, offset, max_seconds):
    if "crash" in os.path.basename(path):
        os.kill(os.getpid(), signal.SIGKILL)
    return workers.decode_file(path, fe_dict, offset, max_seconds)

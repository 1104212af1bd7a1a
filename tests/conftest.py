import os

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs a training script end to end in a subprocess "
                            "(-m 'not slow' leaves them out; CI runs them)")
    if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest.ini's -n auto: the workers share the cores, one thread each
        os.environ["OMP_NUM_THREADS"] = "1"  # also for the scripts the tests start
        torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """On a shared 2-core machine two intra-op threads oversubscribe it (model steps 20-50x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

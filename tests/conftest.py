import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs a training script end to end in a subprocess "
                            "(-m 'not slow' leaves them out; CI runs them)")


@pytest.fixture(scope="module")
def one_thread():
    """On a shared 2-core machine two intra-op threads oversubscribe it (model steps 20-50x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

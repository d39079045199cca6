import pytest
import torch


@pytest.fixture()
def one_thread():
    """One torch thread for the test: on a machine with a couple of busy cores, several threads per
    process oversubscribe them and small training runs get several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

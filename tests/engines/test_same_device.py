"""A tensor on cuda:0 is on an engine built for "cuda" (the current device): the boundary check must agree."""

import torch

from fairsample.core.engine_spec import same_device


def test_bare_cuda_is_the_current_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    cuda, cuda0, cuda1 = torch.device("cuda"), torch.device("cuda:0"), torch.device("cuda:1")
    assert same_device(cuda0, cuda) and same_device(cuda, cuda0) and same_device(cuda, cuda)
    assert not same_device(cuda1, cuda) and not same_device(cuda1, cuda0)
    assert not same_device(torch.device("cpu"), cuda) and same_device(torch.device("cpu"), torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert same_device(cuda1, cuda) and not same_device(cuda0, cuda)

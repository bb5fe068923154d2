"""CUDA paths: skipped on machines without a GPU (CI has none)."""
import pytest
import torch

from quicksilver.sampling import DecodePolicy, generate
from tests.conftest import tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("causal", [False, True])
def test_cuda_logits_match_cpu(causal):
    model = tiny_model(causal=causal)
    x = torch.randint(6, 512, (2, 16))
    cpu = model(x)
    gpu = model.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
def test_cuda_generation_matches_cpu_at_temperature_zero(causal):
    model = tiny_model(causal=causal, mask_token_id=1, eos_token_id=0, pad_token_id=2)
    policy = DecodePolicy(max_new_tokens=8, block_length=4, steps=8, stop_at_eos=False)
    prompts = [[10, 11, 12], [20, 21]]
    cpu = generate(model, prompts, policy).ids
    gpu = generate(model.cuda(), prompts, policy).ids
    assert gpu == cpu

"""Independent references that the tests compare lite_boost against."""

import contextlib

import torch


def reference_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0,
                        softmax_scale=None, q_scale=None, causal=False,
                        window_size=(-1, -1), deterministic=False,
                        dtype=torch.bfloat16, version=None):
    """Wan's ``flash_attention`` contract, written as plain softmax math in fp64.

    q: [B, Lq, N, D], k/v: [B, Lk, N, D]; keys at or past ``k_lens[b]`` are
    padding and get no weight. Only the arguments Wan's DiT passes are honoured.
    """
    assert not causal
    assert tuple(window_size) == (-1, -1)
    assert q_lens is None
    out_dtype = q.dtype
    q, k, v = (t.double() for t in (q, k, v))
    scale = softmax_scale if softmax_scale is not None else q.size(-1) ** -0.5
    if q_scale is not None:
        q = q * q_scale
    scores = torch.einsum("bqnd,bknd->bnqk", q, k) * scale
    if k_lens is not None:
        key_index = torch.arange(k.size(1), device=k.device)
        padded = key_index[None, :] >= k_lens.to(k.device)[:, None]  # [B, Lk]
        scores = scores.masked_fill(padded[:, None, None, :], float("-inf"))
    weights = scores.softmax(dim=-1)
    return torch.einsum("bnqk,bknd->bqnd", weights, v).to(out_dtype)


@contextlib.contextmanager
def wan_reference_attention():
    """Bind ``reference_attention`` where Wan's DiT looks up flash_attention."""
    import wan.modules.model as wan_model

    original = wan_model.flash_attention
    wan_model.flash_attention = reference_attention
    try:
        yield
    finally:
        wan_model.flash_attention = original

import torch
import torch.nn.functional as F
from torch import nn
from tierlab.models.tiny_gpt import TinyGPT


class Model(TinyGPT):
    """A hand-built decoder with two classic bugs: no causal mask, and an output layer
    scaled so that its activations overflow fp16."""

    def __init__(self, vocab_size=256):
        super().__init__(vocab_size=vocab_size, n_layer=2, n_head=2, d_model=64, max_seq_len=128)
        self.out_scale = 1e5

    def forward(self, input_ids):
        B, T = input_ids.shape
        x = self.tok_emb(input_ids) + self.pos_emb(torch.arange(T, device=input_ids.device))
        for block in self.blocks:
            a = block.attn
            h = block.ln1(x)
            q, k, v = a.qkv(h).split(h.size(-1), dim=2)
            q, k, v = (t.view(B, T, a.n_head, -1).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v)          # bug: is_causal missing
            x = x + a.proj(y.transpose(1, 2).reshape(B, T, -1))
            x = x + block.mlp(block.ln2(x))
        return self.head(self.ln_f(x) * self.out_scale) / self.out_scale

import torch
import torch.nn as nn


class GraphTransformer(nn.Module):
    def __init__(self, vocab_size, seq_length, embed_dim, num_heads, hidden_dim, dropout=0.0):
        super().__init__()
        self.embedding_0 = nn.Embedding(vocab_size, embed_dim)
        self.position_0 = nn.Embedding(seq_length, embed_dim)
        self.mhsa_0 = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout, batch_first=True)
        self.norm_0 = nn.LayerNorm(embed_dim)
        self.ffn_0 = nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim))
        self.norm_1 = nn.LayerNorm(embed_dim)
        self.output_0 = nn.Linear(embed_dim, vocab_size)

    def forward(self, input_0_tokens):
        positions = torch.arange(input_0_tokens.size(1), device=input_0_tokens.device)
        embedding_0_output = self.embedding_0(input_0_tokens) + self.position_0(positions)
        mhsa_0_output, _ = self.mhsa_0(embedding_0_output, embedding_0_output, embedding_0_output)
        residual_0_output = self.norm_0(embedding_0_output + mhsa_0_output)
        residual_1_output = self.norm_1(residual_0_output + self.ffn_0(residual_0_output))
        return self.output_0(residual_1_output)

import torch.nn as nn


class Encoder(nn.Module):
    def __init__(self, vocab_size, d_model):
        super().__init__()
        self.embedding, self.out = nn.Embedding(vocab_size, d_model), nn.Linear(d_model, vocab_size)

    def forward(self, x):
        return self.out(self.embedding(x))


class Decoder(nn.Module):
    def __init__(self, vocab_size, d_model):
        super().__init__()
        self.embedding, self.out = nn.Embedding(vocab_size, d_model), nn.Linear(d_model, vocab_size)

    def forward(self, x):
        return self.out(self.embedding(x))

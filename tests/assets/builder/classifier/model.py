import torch
import torch.nn as nn


class TextClassifier(nn.Module):
    """A Transformer Builder-style encoder classifier: token + position embeddings, nn.TransformerEncoder,
    mean over the positions, a linear head of num_classes."""

    def __init__(self, vocab_size, d_model, nhead, num_layers, max_seq_len, num_classes=2):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.positions = nn.Embedding(max_seq_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model=d_model, nhead=nhead, dim_feedforward=4 * d_model, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=num_layers)
        self.classifier = nn.Linear(d_model, num_classes)

    def forward(self, input_ids):
        x = self.embedding(input_ids) + self.positions(torch.arange(input_ids.size(1), device=input_ids.device))
        return self.classifier(self.encoder(x).mean(dim=1))  # [B, num_classes]

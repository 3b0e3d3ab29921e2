"""A tiny data2vec text architecture, vocabulary and masked batch shared by our model and the reference."""

import torch

from fairseq.data import Dictionary

VOCAB = 40  # ordinary symbols, after fairseq's 4 specials; "<mask>" comes last, as masked_lm adds it

TINY_TEXT = dict(
    max_positions=24,
    head_layers=2,
    average_top_k_layers=3,
    layer_norm_target_layer=True,
    loss_beta=4.0,
    loss_scale=1.0,  # the reference fails on None (it compares None <= 0)
    ema_decay=0.99,
    ema_end_decay=0.999,
    ema_anneal_end_step=10,
    ema_transformer_layers_only=True,
    transformer=dict(
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layernorm_embedding=True,
        activation_fn="gelu",
        no_scale_embedding=True,
        max_source_positions=24,
        encoder=dict(embed_dim=32, ffn_embed_dim=64, layers=4, attention_heads=4, normalize_before=False,
                     learned_pos=True, layerdrop=0.0),
    ),
)


def make_dictionary() -> Dictionary:
    d = Dictionary()
    for i in range(VOCAB):
        d.add_symbol(f"w{i}")
    d.add_symbol("<mask>")
    return d


def make_batch():
    """A BERT-masked batch as fairseq's masked_lm task gives it, and the unmasked tokens.

    Returns ``(src_tokens, target_tokens, tokens)``, each ``(B, T)``: the masked input; the original
    token at every selected position and padding elsewhere; the original sentences. The second row
    is padded. Selected positions hold ``<mask>``, a random token or the unchanged token.
    """
    d = make_dictionary()
    g = torch.Generator().manual_seed(1)
    B, T = 3, 20
    tokens = torch.randint(d.nspecial, d.nspecial + VOCAB, (B, T), generator=g)
    tokens[:, 0] = d.bos()
    tokens[:, -1] = d.eos()
    tokens[1, 14:] = d.pad()
    tokens[1, 13] = d.eos()
    selected = (torch.rand(B, T, generator=g) < 0.3) & tokens.ne(d.pad())
    kind = torch.rand(B, T, generator=g)  # < 0.8: <mask>; < 0.9: random token; else unchanged
    src = tokens.clone()
    src[selected & (kind < 0.8)] = d.index("<mask>")
    random_tokens = torch.randint(d.nspecial, d.nspecial + VOCAB, (B, T), generator=g)
    replace = selected & (kind >= 0.8) & (kind < 0.9)
    src[replace] = random_tokens[replace]
    target = torch.where(selected, tokens, torch.full_like(tokens, d.pad()))
    return src, target, tokens

"""Causal text towers (HF CLIP): ``encode_text`` cuts the padding after the batch's last end
token; the features are the same as with the full context, for plain ids, for prompt embeddings
laid over the ids, and with deep text prompts inserted by layer hooks (MaPLe)."""
import torch

from medadapt.backbones import load_backbone


def _both(bb, fn):
    bb.trim_text_padding = True
    a = fn()
    bb.trim_text_padding = False
    b = fn()
    bb.trim_text_padding = True
    return a, b


def test_trimmed_text_features_equal_full_context():
    bb = load_backbone("tiny-hf-clip")
    ids = bb.tokenize(["a photo of adipose tissue.", "a much longer prompt about tumour epithelium "
                       "with crowded nuclei.", "x"])
    seen = []
    orig = bb._encode_text
    bb._encode_text = lambda i: (seen.append(i.shape[1]), orig(i))[1]
    a, b = _both(bb, lambda: bb.encode_text(ids))
    assert seen[0] == int(bb.eos_positions(ids).max()) + 1 < ids.shape[1] == seen[1]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    emb = bb.embed_tokens(ids).detach() + 0.01 * torch.randn(*ids.shape, bb.text_width)
    a, b = _both(bb, lambda: bb.encode_text(ids, embeddings=emb))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_trim_with_deep_text_prompts_and_gradients():
    from medadapt.data.texts import ClassTexts
    from medadapt.methods import Batch, get_method
    bb = load_backbone("tiny-hf-clip")
    texts = ClassTexts(["adipose", "tumour epithelium", "smooth muscle"], ["a photo of {}."], {})
    torch.manual_seed(0)
    m = get_method("maple")(bb, texts, {})
    x = torch.randn(2, 3, bb.image_size, bb.image_size)

    def run():
        m.zero_grad()
        out = m(Batch(labels=torch.tensor([0, 1]), images=x))
        out.sum().backward()
        grads = [p.grad.flatten() for p in m.parameters() if p.requires_grad and p.grad is not None]
        assert grads
        return out.detach(), torch.cat(grads)

    (la, ga), (lb, gb) = _both(bb, run)
    torch.testing.assert_close(la, lb, rtol=0, atol=1e-4)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)

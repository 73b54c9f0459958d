"""A tiny random llama for tests of the decode loop: 2 layers, hidden 64, 4 heads over 2 key/value
heads, a vocabulary of 320; its linears quantized to 4 bits and its embedding to 8 (groups of 32), as
the embedded GGUF's are, so that an embedding row is gathered from packed weights."""
import mlxarm.core as ma


def tiny_llama(seed: int = 3):
    import mlxarm.nn as nn
    from mlxarm.lm.models import ARCHITECTURES

    module = ARCHITECTURES["llama"]
    args = module.ModelArgs(model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                            num_attention_heads=4, num_key_value_heads=2, vocab_size=320, rope_theta=10000.0)
    ma.random.seed(seed)
    model = module.Model(args)
    model.model.embed_tokens.weight = ma.random.uniform(-1.0, 1.0, model.model.embed_tokens.weight.shape)

    def settings(_path, m):
        if isinstance(m, nn.Embedding):
            return {"group_size": 32, "bits": 8}
        return {"group_size": 32, "bits": 4} if isinstance(m, nn.Linear) else False

    nn.quantize(model, class_predicate=settings)
    return model

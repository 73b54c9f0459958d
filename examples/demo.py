"""Build a lazy graph, evaluate it, and say what ran it.

    python examples/demo.py
"""
import mlxarm.core as mx


def main():
    mx.random.seed(0)
    x = mx.random.normal((4, 8))
    w = mx.arange(8 * 3, dtype=mx.float32).reshape(8, 3) / 24.0
    logits = mx.tanh(x @ w + 0.5)
    probs = mx.softmax(logits, axis=-1)
    total = probs.sum(axis=-1)
    print(f"recorded a lazy graph for probs {probs.shape} and row sums {total.shape}")
    mx.eval(probs, total)  # the whole graph is computed here
    print("probs =", probs)
    print("row sums =", total)
    info = mx.device_info()
    print(f"evaluated by the {info['executor']} executor on {mx.default_device()}")


if __name__ == "__main__":
    main()

"""Text-aligned views: zero-shot neuron search, text feature vis, rendered words, labels."""

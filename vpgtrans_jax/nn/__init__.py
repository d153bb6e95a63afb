"""Building blocks shared by every tower: layers, attention, layer stacks, KV caches."""

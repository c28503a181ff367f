"""Transfer learning on frozen features: linear probe, few-shot methods, prompt learning."""

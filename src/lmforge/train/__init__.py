"""Training: the loop, data order, DeepSpeed, plans, launch, growth and reports."""

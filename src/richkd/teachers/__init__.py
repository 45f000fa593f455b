"""The frozen teachers: the task-trained CNN run on a batch (`frozen`), the vision-language backends (open_clip,
Hugging Face, the offline ConSE-style surrogate, a random test model), prompts and zero-shot classifier
weights, and their preprocessing. What these produce is stored and served by `richkd.caches`."""

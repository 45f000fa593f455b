"""The training engine, method-agnostic: the epoch loop and its logging (`trainer`), optimiser and schedule
(`optim`), checkpoints and model files (`checkpoint`), evaluation (`evaluate`), devices and DDP (`device`,
`dist`), batch assembly (`batches`), BatchNorm folding (`fold`), atomic writes and the writer lock (`io`,
`lock`) and child-process hygiene (`proc`)."""

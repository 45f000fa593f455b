"""Where the study's runs execute: `local` (the runner's process pool, richkd.study.runner) or `slurm` (one SLURM
job per (arm, seed) through submitit, richkd.study.executors.slurm)."""

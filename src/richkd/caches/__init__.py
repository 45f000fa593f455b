"""Caches of teacher outputs, built once and read every epoch.

Owns the vision-language target cache (`target`), the teacher-logit cache (`teacher`), the streamed ImageNet
cache (`stream`, merged by `stream_merge`), their builders (`build_target`, `build_teacher`), the chunked,
resumable writer they share (`chunked`) and where a cache's arrays live in memory (`residency`). The frozen
models that produce the values stay in `richkd.teachers`; this package stores and serves them.
"""

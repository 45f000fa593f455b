"""Caches: what a frozen teacher produced, stored once and served to every run that distils from it.

Owns the vision-language target cache (`target`, built by `build_target`), the CNN teacher cache (`teacher`,
built by `build_teacher`), the streamed, sharded ImageNet target cache (`stream`, `stream_layout`,
`stream_merge`), the chunked, resumable build loop they share (`chunked`), the logit-scale fit on a cache's
cosines (`fit_scale`) and how a cache is kept in memory (`residency`). The teachers themselves live in
`richkd.teachers`.
"""

"""What every part of the suite shares and that belongs to none of them: file I/O (`files`),
child processes (`child`), the command lines' converters and exit codes (`cli`), user errors
(`errors`), the rules that judge where a step's time goes (`bottleneck`: the trainer's summary and
the sweep's report), the median's 95% interval (`stats`: the report and `ThroughputCallback`).
Imports nothing else from the project, so any package may import it.
"""

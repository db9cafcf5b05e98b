"""What every part of the suite shares and that belongs to none of them: file I/O (`files`) and
child processes (`child`). Imports nothing else from the project, so any package may import it.
"""

"""Programs and files setup.py builds or copies here (stdpkt-launch, stdpkt-agent, stdpkt-init,
init.sh, boot-profile), so that an installed package carries them.

A package of its own (with this file) so that setuptools finds it before the build fills it:
it is listed in the distribution's packages and its files are package data.
"""

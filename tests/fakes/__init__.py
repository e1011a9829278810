"""Fakes of the services voicerun talks to: real local servers with scriptable faults.

Import them as `from fakes.usage_api import FakeUsageAPI`: tests/ has no __init__.py, so pytest
(rootdir-relative "prepend" imports) puts tests/ on sys.path when it loads tests/conftest.py.
"""

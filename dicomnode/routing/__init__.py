"""Completion and routing: when a study is complete, and which modules run on which series.

- :mod:`~dicomnode.routing.completion`: the sweep (series by expected count or
  ``series_quiet_seconds``; study when its series are complete and no new series came
  for ``study_quiet_seconds``), and routing a complete study once per generation.
- :mod:`~dicomnode.routing.rules`: the TOML rules (shipped ``defaults.toml`` and the
  user's ``routing.rules_file``), checked at start with file, line and reason.
- :mod:`~dicomnode.routing.conditions` and :mod:`~dicomnode.routing.facts`: what a rule
  can test, on which indexed attributes.
- :mod:`~dicomnode.routing.router`: rules × facts → outcomes and routes, the one place
  rules are evaluated; :mod:`~dicomnode.routing.explain` shows the outcomes to people.

Routing knows the index only; the jobs layer turns routes into ``Job`` rows through
the ``enqueue`` callback it hands the sweep.
"""

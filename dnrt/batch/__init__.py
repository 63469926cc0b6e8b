"""``dnrt batch``: translate a collection of slides, resumable, one failure not stopping the rest.

The pieces, each with one job: :mod:`.jobs` turns the slide list and the output name template
into validated jobs; :mod:`.ledger` is the record of finished slides kept in the output folder;
:mod:`.options` splits the translation options between the Translator and its per-file call
and fingerprints them; :mod:`.local` runs the jobs in this process with one Translator;
:mod:`.cluster` runs them on a Ray cluster (Ray is imported there only); :mod:`.runner` is the
driver both modes share (skip what is done, record what happens, progress, summary);
:mod:`.cli` is the click command.
"""

"""``greenwatch slurm prolog|epilog``: what Slurm's Prolog and Epilog do on a GPU node.

One module per responsibility: :mod:`.environment` (the job from Slurm's environment, host
lists), :mod:`.gpus` (Slurm GPU ids to NVML UUIDs), :mod:`.mapping` (the mapping directory),
:mod:`.spool` (events queued on disk), :mod:`.publish` (to the broker), :mod:`.report` (the
epilog's background report) and :mod:`.hooks` (the prolog and epilog themselves).
"""

from greenwatch.agent.slurm.environment import SlurmJob, first_host, parse_gpu_ids, this_node
from greenwatch.agent.slurm.gpus import nvml_gpu_table, translate_gpu_ids
from greenwatch.agent.slurm.hooks import build_event, run_hook
from greenwatch.agent.slurm.mapping import remove_mapping_files, write_mapping_files
from greenwatch.agent.slurm.publish import publish_spooled
from greenwatch.agent.slurm.report import claim_report, plan_epilog_report, release_report, spawn_report
from greenwatch.agent.slurm.spool import EventSpool

__all__ = ["SlurmJob", "EventSpool", "parse_gpu_ids", "translate_gpu_ids", "nvml_gpu_table",
           "write_mapping_files", "remove_mapping_files", "publish_spooled", "run_hook", "build_event",
           "first_host", "this_node", "plan_epilog_report", "claim_report", "release_report", "spawn_report"]

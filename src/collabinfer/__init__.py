"""collabinfer: adaptive and collaborative DNN inference across device, edge and cloud.

A model is a :class:`BlockNet`; a :class:`Planner` turns its :class:`Profile`
and link estimates into a :class:`Plan`; a :class:`Chain` runs each input
block by block across tiers while a policy decides, after every block, to
exit, continue or offload. See the README for the tour and ``collabinfer --help``
for the command line.

Example::

    >>> import collabinfer as ci
    >>> net = ci.create_model("tiny-cnn")
    >>> prof = ci.profile_model(net, "tiny-cnn", repeats=2)
    >>> tiers = [ci.TierSpec("device", 50.0), ci.TierSpec("edge")]
    >>> plan = ci.Planner(prof, tiers).plan([ci.get_profile("lte")])
    >>> link = ci.SimulatedLink(ci.get_profile("lte"))
    >>> chain = ci.Chain(net, tiers, [link], ci.StaticPolicy(plan), profile=prof)
    >>> import torch
    >>> chain.run(torch.rand(1, 1, 28, 28)).output.shape
    torch.Size([1, 10])
"""

from collabinfer.cache import HitRule, Reuse, SemanticCache, solve_rule
from collabinfer.codec import Codec, Encoded, TensorHeader, get_codec, list_codecs, register_codec
from collabinfer.data import Dataset, load_split, synthetic_dataset
from collabinfer.data.workloads import WorkloadConfig, make_stream
from collabinfer.errors import (
    CheckpointError,
    CodecError,
    CollabInferError,
    ConfigError,
    DataError,
    LinkError,
    LinkTimeout,
    ModelError,
    PlanError,
    TierError,
)
from collabinfer.model.blocks import BlockNet, CutPoint
from collabinfer.model.dynamic import DynamicNet, ExitRule
from collabinfer.model.exits import ExitBranches
from collabinfer.model.gates import gate_net
from collabinfer.model.zoo import ModelSpec, create_model, list_models, register_model
from collabinfer.plan.cost import Plan, PlanCost, PowerModel, evaluate_plan
from collabinfer.plan.planner import Planner
from collabinfer.plan.profile import Profile, profile_model
from collabinfer.plan.thresholds import ExitProblem, solve_thresholds
from collabinfer.runtime.chain import Chain, ChainResult
from collabinfer.runtime.estimator import LinkEstimator
from collabinfer.runtime.exit_policy import DeviceExits, ExitingPolicy
from collabinfer.runtime.link import BandwidthTrace, Link, SimulatedLink, synthetic_trace
from collabinfer.runtime.policy import Action, AdaptivePolicy, Decision, Policy, StaticPolicy
from collabinfer.runtime.state import State, Step, StepKind, Trace
from collabinfer.topology.links import PROFILES, LinkProfile, get_profile
from collabinfer.topology.tiers import TierSpec
from collabinfer.train import TrainConfig, train_or_load

__version__ = "0.1.0"

__all__ = [
    "PROFILES",
    "Action",
    "AdaptivePolicy",
    "BandwidthTrace",
    "BlockNet",
    "Chain",
    "ChainResult",
    "CheckpointError",
    "Codec",
    "CodecError",
    "CollabInferError",
    "ConfigError",
    "CutPoint",
    "DataError",
    "Dataset",
    "Decision",
    "DeviceExits",
    "DynamicNet",
    "Encoded",
    "ExitBranches",
    "ExitProblem",
    "ExitRule",
    "ExitingPolicy",
    "HitRule",
    "Link",
    "LinkError",
    "LinkEstimator",
    "LinkProfile",
    "LinkTimeout",
    "ModelError",
    "ModelSpec",
    "Plan",
    "PlanCost",
    "PlanError",
    "Planner",
    "Policy",
    "PowerModel",
    "Profile",
    "Reuse",
    "SemanticCache",
    "SimulatedLink",
    "State",
    "StaticPolicy",
    "Step",
    "StepKind",
    "TensorHeader",
    "TierError",
    "TierSpec",
    "Trace",
    "TrainConfig",
    "WorkloadConfig",
    "__version__",
    "create_model",
    "evaluate_plan",
    "gate_net",
    "get_codec",
    "get_profile",
    "list_codecs",
    "list_models",
    "load_split",
    "make_stream",
    "profile_model",
    "register_codec",
    "register_model",
    "solve_rule",
    "solve_thresholds",
    "synthetic_dataset",
    "synthetic_trace",
    "train_or_load",
]

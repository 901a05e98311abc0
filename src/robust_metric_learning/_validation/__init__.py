"""Input checks shared by the whole package: the one validation path.

Every public entry point validates through these helpers so that bad input gets one clear message
that names the argument, what was expected and what was received. :mod:`.arrays` checks arrays,
labels, metrics, scalars and declared parameters; :mod:`.tensors` the inputs, embeddings, labels and
row indices of deep models, retrieval and embedding attacks.
"""

from .arrays import (
    MAX_ABS,
    MAX_SEED,
    Interval,
    Options,
    SequenceOf,
    TupleOf,
    check_array_2d,
    check_bool,
    check_eps,
    check_labels,
    check_metric_array,
    check_metric_scale,
    check_n_features,
    check_nonnegative_int,
    check_odd_k,
    check_params,
    check_positive_int,
    check_real,
    check_scale,
    check_seed,
    resolve_metric,
    validate_params,
)
from .tensors import (
    as_tensor,
    batch_labels,
    check_embeddings,
    check_index,
    check_model_output,
    check_query_rows,
    check_self_rows,
    check_unit_interval,
    label_classes,
    label_codes,
    paired_label_codes,
    real_tensor,
    retrieval_label_codes,
)

__all__ = ["MAX_ABS", "MAX_SEED", "Interval", "Options", "SequenceOf", "TupleOf", "check_array_2d", "check_bool", "check_eps",
           "check_labels", "check_metric_array", "check_metric_scale", "check_n_features", "check_nonnegative_int",
           "check_odd_k", "check_params", "check_positive_int", "check_real", "check_scale", "check_seed", "resolve_metric",
           "validate_params", "as_tensor", "batch_labels", "check_embeddings", "check_index", "check_model_output",
           "check_query_rows", "check_self_rows", "check_unit_interval", "label_classes", "label_codes", "paired_label_codes",
           "real_tensor", "retrieval_label_codes"]

"""Named datasets, file readers (IDX, LIBSVM) and checksummed downloads.

Datasets are read from a *data home* folder (see :func:`get_data_home`) in
their standard public formats; scikit-learn's bundled ``digits``, ``iris``,
``wine`` and ``breast_cancer`` need no files. Nothing is ever downloaded
implicitly: :func:`load_dataset` only reads, and a missing file raises a
``FileNotFoundError`` that says how to get it (:func:`download_dataset`, or
``rml datasets --download NAME``).

Layout of the data home::

    mnist/          train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
                    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz
    fashion-mnist/  (same four file names)
    usps/           usps.bz2  usps.t.bz2          (LIBSVM, bzip2)
    libsvm/         pendigits  pendigits.t  splice (LIBSVM, plain text)

Splits and preprocessing follow the ARML experiments:

- mnist, fashion-mnist, usps, pendigits: the official train/test files.
- splice (only LIBSVM's training file, 1,000 rows) and the bundled sets: a
  fixed stratified split, ``train_test_split(X, y, test_size=0.3,
  stratify=y, random_state=0)``.
- Images (mnist, fashion-mnist): pixels / 255, flattened to 784 features.
  All other sets: min-max scaling fitted on the training part and applied to
  both parts, so training features lie in [0, 1] (test values may fall
  outside).
- Labels are encoded 0..C-1 in the order of the sorted original training
  labels (USPS 1..10 becomes 0..9 = digit; splice -1/+1 becomes 0/1).
"""

from .download import DownloadError, download_dataset
from .home import get_data_home
from .loading import dataset_status, load_dataset
from .readers import load_idx, load_libsvm
from .registry import DATASET_NAMES, REMOTE_FILES, Dataset, RemoteFile

__all__ = [
    "DATASET_NAMES",
    "REMOTE_FILES",
    "Dataset",
    "DownloadError",
    "RemoteFile",
    "dataset_status",
    "download_dataset",
    "get_data_home",
    "load_dataset",
    "load_idx",
    "load_libsvm",
]

"""Semantic anomaly detection, one-class protocol, with NoCo: CIFAR-10, CIFAR-100 (20 superclasses)
and Cats-vs-Dogs. Each class in turn is normal; one model per class; image-level metrics.

    python train_cifar10.py --dataset cifar10 --download
    python train_cifar10.py --dataset cifar100 --data_path /data
    python train_cifar10.py --dataset cats_vs_dogs --data_path /data/CatsVSDogs/0.2-0.8
    python train_cifar10.py --dataset cifar10 --classes frog --target_norm 1,32   # the norm study
    python train_cifar10.py --resume results/<run folder>            # finish an interrupted run
    python train_cifar10.py --checkpoint results/<run folder> ...    # reuse its models where trained exactly so

The run itself (data, frozen features once, a model per class and target norm built by models.METHODS["noco"]
and trained by utils.training.Trainer as train_mvtec.py's are, evaluation of the last checkpoint, the table)
is utils/semantic.py, shared with train_mnist.py; torchrun runs it as it runs train_mvtec.py. Every
constant below can be overridden as --name value; utils/semantic_options.py holds each option's check
and whether it changes the trained model. The last line printed is `results: <csv>`.
"""
from models import option_owners
from utils.config import script_constants
from utils.options import option_table
from utils.semantic import main
from utils.semantic_options import CIFAR10_RULES

# -----------------------------------------------------------------------------
method = "noco"              # the detector (NoCo, one model per normal class)
dataset = "cifar10"          # cifar10 | cifar100 | cats_vs_dogs
data_path = ""               # torchvision's root (CIFAR), or the Cats-vs-Dogs folder; "" = data/
classes = ()                 # comma list of normal classes (names or indices); empty = all
download = False             # let torchvision fetch CIFAR (Cats-vs-Dogs cannot be fetched)
out_dir = "results"          # each run writes results/<script>_<dataset>_noco_<time>/
resume = ""                  # the folder of an interrupted run: train and evaluate the classes it is missing
checkpoint = ""              # a run folder (or one .pt file) whose trained models are reused if their training
                             # configuration matches
seed = 0                     # seeds the target, the projector's init, a random-init encoder and the batch order
device = "auto"              # auto | cpu | cuda
weights = "imagenet"         # imagenet | none (random init) | <path to a state-dict file>
backbone = "resnet152"       # resnet152 (reference) | wide_resnet50_2 | resnet18 | efficientnet_b4 | efficientnet_lite0
layers = ("avgpool",)        # the pooled last feature map (EfficientNets: their head, 1280 / 1792 ch)
encoder_taps = "preact"      # preact: the reference's pre-activation layer4, pooled; standard: torchvision's
image_size = 256             # resize to a square ...
crop_size = 224              # ... then centre-crop (0 = no crop)
resize = "pil"               # pil: PIL bilinear, as torchvision's Resize in the reference | cv2: OpenCV bilinear
batch_size = 64              # training and extraction batch
num_workers = 2              # DataLoader processes that decode images
epochs = 10                  # 0 = cold start: evaluate the untrained detector
lr = 1e-3                    # learning rate
weight_decay = 5e-4          # weight decay (the reference decays r too)
optimizer = "adamw"          # adamw (the reference's) | adam
betas = (0.9, 0.999)         # Adam(W) betas
adam_eps = 1e-8              # Adam(W) eps
amsgrad = True               # Adam(W) amsgrad (the reference's)
lr_drop_at = 0.0             # fraction of the training after which lr is multiplied by lr_drop_gamma (0 = never)
lr_drop_gamma = 0.2          # the factor of that drop
target = "randn"             # randn | rand | ones | mean (of the projected training features)
target_norm = (1.0,)         # more than one value trains one model per norm: the norm study
target_p = 2.0               # the p-norm the target is rescaled under
nu = 1.0                     # the soft boundary's nu (the semantic reference uses 1)
radius_init = 1e-5           # the initial radius r
radius_penalty = 1e3         # the reference CIFAR script's extra `+ 1e3 * r` loss term (0 = off)
cache_features = True        # run the frozen encoder once instead of every epoch
cache_dtype = "float32"      # float32 | float16 | bfloat16
cache_memory_gb = 8.0        # above this, cached features go to a memory-mapped file
cache_dir = ""               # where those files go ("" = the system's temporary folder)
save_checkpoints = True      # the last checkpoint of each model (no other is ever kept or chosen)
checkpoint_every = 1000      # iterations between training snapshots that --resume restarts from (0 = none);
                             # removed when training ends
plots = False                # also draw the figures (PNG) and report.md beside the CSV
# -----------------------------------------------------------------------------
PRESETS = [({"dataset": "cats_vs_dogs"}, {"resize": "cv2"})]  # NoCo's Cats-vs-Dogs loader resizes with OpenCV
OPTIONS = option_table(script_constants(globals()), CIFAR10_RULES, option_owners())  # checks, what trains

if __name__ == "__main__":  # imported (tests, benchmarks): the constants and OPTIONS only
    main(__file__, OPTIONS, PRESETS)

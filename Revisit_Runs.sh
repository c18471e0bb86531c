#!/usr/bin/env bash
# The runs of "Revisiting Training Strategies and Generalization Performance in Deep Metric
# Learning" (Roth et al., ICML 2020): 67 groups x 5 seeds on CUB200-2011, CARS196 and Stanford
# Online Products (335 runs), plus a small CPU sweep on the embedded digits dataset.
#
# Usage:
#   datapath=/data/Datasets ./Revisit_Runs.sh list   [DATASET] [GROUP]   print the command lines
#   datapath=/data/Datasets ./Revisit_Runs.sh run    [DATASET] [GROUP]   run them, one after another
#   ./Revisit_Runs.sh groups [DATASET]                                    print the group names
#   ./Revisit_Runs.sh run digits                                          the CPU sweep (minutes)
#
#   DATASET: all (default: cub200, cars196 and online_products), cub200, cars196,
#            online_products or digits (the digits sweep is never part of "all").
#   GROUP:   group name(s), space-separated (e.g. CUB_Margin_b12_Distance); default: every group.
#
# Environment:
#   datapath    parent folder of the datasets (<datapath>/cub200, ...); required for the study
#   save_path   where run folders go (default ./Training_Results): <save_path>/<dataset>/<group>_s<seed>
#   SEEDS       seeds to run (default "0 1 2 3 4"; digits: "0 1")
#   PYTHON      the interpreter (default "python"; e.g. "uv run python")
#   NPROC       processes per run (default 1: plain "python main.py"); N > 1 launches every run as
#               "$PYTHON -m torch.distributed.run $TORCHRUN_ARGS --nproc_per_node N main.py ...",
#               the same experiment (--bs stays the global batch, so it must be divisible by N:
#               the study's 112 works with 2, 4, 7, 8)
#   TORCHRUN_ARGS  torchrun's own flags (default "--standalone"; several nodes: e.g. "--nnodes 2
#               --rdzv_backend c10d --rdzv_endpoint host:29500 --rdzv_id $SLURM_JOB_ID")
#   EXTRA_ARGS  appended to every command, so they override the study's flags (e.g. "--n_epochs 1")
#   LOG_ONLINE  1: also log to W&B (project RevisitDML; the key comes from WANDB_API_KEY or
#               `wandb login`); default: local run folders only
#   CV_FOLDS    K > 1: every run becomes K class-disjoint cross-validation folds, main.py --cv_folds K
#               --cv_fold i (i = 0..K-1), each a normal run of group <group>_f<i> in the folder
#               <group>_f<i>_s<seed>, its epoch selected on the held-out fold (the digits sweep drops
#               its --use_tv_split). Each fold is its own --group, so Result_Evaluations.py never
#               takes the folds of a seed for reruns of it. Then, per seed:
#               python -m evaluation --ensemble <save_path>/<dataset>/<group>_f{0..K-1}_s<seed>
#               Default 0: no folds (the study's runs)
#   CV_SCHEME   --cv_scheme of the folds: random (default, seeded by --seed) or mlrc (the folds of
#               A Metric Learning Reality Check; use CV_FOLDS=4)
#
# "run" skips a run whose summary.json exists (finished) and resumes one whose folder exists
# without it (killed: main.py --resume continues from its last epoch checkpoint), so the script
# can be restarted at any time. Failed runs are reported at the end; the script exits non-zero.
#
# Fixed with respect to the study's Sample_Runs/ICML2020_RevisitDML_SampleRuns.sh: the group
# "CUBreg_SNR_Distance _3" (a stray space made argparse reject those 5 runs) is
# CUBreg_SNR_Distance_3; section headers are bash comments, not Python docstrings; the stray debug
# run with a personal path is gone; the data path comes from $datapath; every run gets an explicit
# --savename <group>_s<seed> so finished runs can be found, and W&B is optional. The group names,
# including CUB's "_3" suffixes, are kept so results stay comparable with the study's W&B project.
# The study's flags are otherwise unchanged (bs 112, 2 samples per class, lr 1e-5, no LR decay,
# 150 epochs, SOP 100). Note: like the study, these runs select the epoch on the TEST split
# (no --use_tv_split); summary.json and Result_Evaluations.py label it. Add EXTRA_ARGS=--use_tv_split
# (or CV_FOLDS=4) to select on a validation split instead.

set -uo pipefail

COMMON="--kernels 6 --bs 112 --samples_per_class 2"
NORM="--arch resnet50_frozen_normalize"
UNNORM="--arch resnet50_frozen"

# One line per group: "<group suffix>|<flags>". The dataset prefix is added below.
study_methods() {
    local ds=$1 hist_bins=65 softmax="" cp_con cp_m06 cp_m12 cp_tri cp_snr sfx=""
    case $ds in
        cub200) cp_con=0.4 cp_m06=0.4 cp_m12=0.35 cp_tri=0.4 cp_snr=0.3 sfx=_3 ;;
        cars196) cp_con=0.35 cp_m06=0.35 cp_m12=0.35 cp_tri=0.35 cp_snr=0.35 ;;
        online_products) cp_con=0.15 cp_m06=0.15 cp_m12=0.15 cp_tri=0.15 cp_snr=0.15
            hist_bins=11 softmax="--loss_softmax_lr 0.002" ;;
    esac
    echo "Npair|--loss npair --batch_mining npair $UNNORM"
    echo "GenLifted|--loss lifted --batch_mining lifted $UNNORM"
    if [[ $ds != online_products ]]; then
        echo "ProxyNCA|--loss proxynca $NORM"
    fi
    echo "Histogram|--loss histogram --loss_histogram_nbins $hist_bins $NORM"
    echo "Contrastive|--loss contrastive --batch_mining distance $NORM"
    if [[ $ds != online_products ]]; then
        echo "SoftTriple|--loss softtriplet $NORM"
    fi
    echo "Angular|--loss angular --batch_mining npair $UNNORM"
    echo "ArcFace|--loss arcface $NORM"
    echo "Triplet_Random|--loss triplet --batch_mining random $NORM"
    echo "Triplet_Semihard|--loss triplet --batch_mining semihard $NORM"
    echo "Triplet_Softhard|--loss triplet --batch_mining softhard $NORM"
    echo "Triplet_Distance|--loss triplet --batch_mining distance $NORM"
    echo "Quadruplet_Distance|--loss quadruplet --batch_mining distance $NORM"
    echo "Margin_b06_Distance|--loss margin --batch_mining distance --loss_margin_beta 0.6 $NORM"
    echo "Margin_b12_Distance|--loss margin --batch_mining distance --loss_margin_beta 1.2 $NORM"
    echo "SNR_Distance|--loss snr --batch_mining distance $NORM"
    echo "MS|--loss multisimilarity $NORM"
    echo "Softmax|--loss softmax ${softmax:+$softmax }$NORM"
    # the study's rho-regularised variants: distance-weighted mining with rho-flips
    echo "reg:Contrastive|--loss contrastive --batch_mining rho_distance --miner_rho_distance_cp $cp_con $NORM"
    echo "reg:Margin_b06_Distance|--loss margin --batch_mining rho_distance --loss_margin_beta 0.6 --miner_rho_distance_cp $cp_m06 $NORM"
    echo "reg:Margin_b12_Distance$sfx|--loss margin --batch_mining rho_distance --loss_margin_beta 1.2 --miner_rho_distance_cp $cp_m12 $NORM"
    echo "reg:Triplet_Distance$sfx|--loss triplet --batch_mining rho_distance --miner_rho_distance_cp $cp_tri $NORM"
    echo "reg:SNR_Distance$sfx|--loss snr --batch_mining rho_distance --miner_rho_distance_cp $cp_snr $NORM"
}

# The embedded-dataset sweep: a few methods on a small CNN, a couple of CPU minutes per run.
digits_methods() {
    local arch="--arch smallcnn_normalize"
    echo "Margin_b12_Distance|--loss margin --batch_mining distance $arch"
    echo "Triplet_Semihard|--loss triplet --batch_mining semihard $arch"
    echo "Contrastive|--loss contrastive --batch_mining distance $arch"
    echo "MS|--loss multisimilarity $arch"
    echo "reg:Margin_b12_Distance|--loss margin --batch_mining rho_distance --miner_rho_distance_cp 0.2 $arch"
}

prefix() {  # dataset, regularised(0/1) -> group prefix
    case $1 in
        cub200) [[ $2 == 1 ]] && echo CUBreg_ || echo CUB_ ;;
        cars196) [[ $2 == 1 ]] && echo CARreg_ || echo CARS_ ;;
        online_products) [[ $2 == 1 ]] && echo SOPreg_ || echo SOP_ ;;
        digits) [[ $2 == 1 ]] && echo DIGreg_ || echo DIG_ ;;
    esac
}

# Prints "<dataset>|<group>|<seed>|<flags>" for every selected run.
runs() {
    local datasets=$1 only_group=$2 ds line name flags reg group seed seeds epochs source
    local folds=${CV_FOLDS:-0} scheme=${CV_SCHEME:-random} fold
    for ds in $datasets; do
        if [[ $ds == digits ]]; then
            seeds=${SEEDS:-"0 1"} epochs=20 source="--lr 1e-3 --bs 100 --samples_per_class 4 --kernels 0 --embed_dim 64 --use_tv_split --tv_split_by_samples --storage_metrics mAP@R e_recall@1"
            # the held-out fold is the validation split (main.py refuses both)
            [[ $folds -gt 1 ]] && source=${source/ --use_tv_split --tv_split_by_samples/}
        else
            seeds=${SEEDS:-"0 1 2 3 4"} source="$COMMON --source \$datapath"
            [[ $ds == online_products ]] && epochs=100 || epochs=150
        fi
        while IFS= read -r line; do
            name=${line%%|*} flags=${line#*|} reg=0
            if [[ $name == reg:* ]]; then name=${name#reg:} reg=1; fi
            group="$(prefix "$ds" $reg)$name"
            [[ -n $only_group && " $only_group " != *" $group "* ]] && continue
            for seed in $seeds; do
                if [[ $folds -le 1 ]]; then
                    echo "$ds|$group|$seed|--dataset $ds $flags --n_epochs $epochs $source --seed $seed --group $group --savename ${group}_s$seed"
                    continue
                fi
                for ((fold = 0; fold < folds; fold++)); do
                    echo "$ds|${group}_f$fold|$seed|--dataset $ds $flags --n_epochs $epochs $source --seed $seed --group ${group}_f$fold --savename ${group}_f${fold}_s$seed --cv_folds $folds --cv_fold $fold --cv_scheme $scheme"
                done
            done
        done < <(if [[ $ds == digits ]]; then digits_methods; else study_methods "$ds"; fi)
    done
}

main() {
    local cmd=${1:-list} dataset=${2:-all} group=${3:-} datasets
    if [[ ! ${CV_FOLDS:-0} =~ ^(0|[1-9][0-9]*)$ ]]; then
        echo "CV_FOLDS must be a number of folds (0 or 1: none), got '$CV_FOLDS'" >&2; exit 2
    fi
    case ${CV_SCHEME:-random} in
        random|mlrc) ;;
        *) echo "CV_SCHEME must be random or mlrc, got '$CV_SCHEME'" >&2; exit 2 ;;
    esac
    case $dataset in
        all) datasets="cub200 cars196 online_products" ;;
        cub200|cars196|online_products|digits) datasets=$dataset ;;
        *) echo "unknown dataset '$dataset' (all, cub200, cars196, online_products, digits)" >&2; exit 2 ;;
    esac
    local save=${save_path:-./Training_Results} python=${PYTHON:-python} extra=${EXTRA_ARGS:-}
    local launch="$python main.py"
    if [[ ${NPROC:-1} -gt 1 ]]; then
        launch="$python -m torch.distributed.run ${TORCHRUN_ARGS:---standalone} --nproc_per_node $NPROC main.py"
    fi
    local online=""
    [[ ${LOG_ONLINE:-0} == 1 ]] && online="--log_online --project RevisitDML"
    if [[ $cmd == run && $datasets != digits && -z ${datapath:-} ]]; then
        echo "set \$datapath to the parent folder of the datasets" >&2; exit 2
    fi
    local all n=0 failed=0 ds g seed flags folder
    all=$(runs "$datasets" "$group")
    if [[ -z $all ]]; then echo "no run matches dataset '$dataset' group '$group'" >&2; exit 2; fi
    case $cmd in
        groups) cut -d'|' -f2 <<< "$all" | awk '!seen[$0]++' ;;  # folds interleave with seeds
        list)
            while IFS='|' read -r ds g seed flags; do
                echo "$launch $flags --save_path $save $online $extra" | tr -s ' ' | sed 's/ $//'
            done <<< "$all" ;;
        run)
            while IFS='|' read -r ds g seed flags; do
                n=$((n + 1))
                folder="$save/$ds/${g}_s$seed"
                if [[ -f $folder/summary.json ]]; then
                    echo "[$n] skip $g seed $seed: finished ($folder/summary.json)"; continue
                fi
                if [[ -f $folder/args.json ]]; then
                    echo "[$n] resume $g seed $seed"
                    $launch --resume "$folder" </dev/null || { failed=$((failed + 1)); echo "FAILED: $g seed $seed" >&2; }
                    continue
                fi
                echo "[$n] run $g seed $seed"
                flags=${flags//\$datapath/${datapath:-}}
                # shellcheck disable=SC2086  # the flags are meant to split into words
                $launch $flags --save_path "$save" $online $extra </dev/null \
                    || { failed=$((failed + 1)); echo "FAILED: $g seed $seed" >&2; }
            done <<< "$all"
            if [[ $failed -gt 0 ]]; then echo "$failed run(s) failed" >&2; exit 1; fi ;;
        *) echo "usage: $0 list|run|groups [DATASET] [GROUP]" >&2; exit 2 ;;
    esac
}

main "$@"

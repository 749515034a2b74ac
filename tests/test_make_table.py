"""scripts/make_table.py: grouping over seeds, mean ± std, rule labels and paper numbers."""
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import make_table  # noqa: E402


def fake_result(folder, label, top1, val=None, train_time_s=None, hardware=None, seed=0):
    os.makedirs(folder, exist_ok=True)
    result = {"dataset": "cifar10", "imb_factor": 0.01, "label": label, "arch": "resnet32", "seed": seed,
              "train_counts": [50, 5], "method": "erm", "device": "cpu", "train_time_s": train_time_s,
              "hardware": hardware,
              "last": {"top1": top1, "many": None, "medium": top1 + 1, "few": top1 - 1, "per_class": [top1, None]},
              "best_on_test": {"top1": top1 + 2}}
    if val is not None:
        result["best_on_val"] = {"top1": val}
    with open(os.path.join(folder, "results.json"), "w") as stream:
        json.dump(result, stream)


def test_table_averages_seeds_and_labels_rules(tmp_path):
    fake_result(str(tmp_path / "a"), "bccl", 80.0, train_time_s=3 * 3600, hardware="AMD EPYC (1 thread)")
    fake_result(str(tmp_path / "b"), "bccl", 82.0, train_time_s=4 * 3600, hardware="AMD EPYC (1 thread)", seed=1)
    fake_result(str(tmp_path / "c"), "balanced_softmax", 70.0, val=69.0, train_time_s=1500)
    results = [json.load(open(p)) for p in make_table.find_results([str(tmp_path)])]
    table = make_table.build_table(results, paper=True)
    bccl = next(line for line in table.splitlines() if "| bccl |" in line)
    # mean of 80 and 82, sample std sqrt(2) = 1.41; best-on-test mean 83; BCCL's paper number.
    assert "| 2 | 81.00 ± 1.41 |" in bccl and "| n/a |" in bccl
    assert "83.00 ± 1.41 | best on TEST | 85.22 | 3.5 h | AMD EPYC (1 thread) |" in bccl
    softmax = next(line for line in table.splitlines() if "| balanced_softmax |" in line)
    # No paper number for this row: an empty cell. An older results.json without the hardware
    # field falls back to the device name.
    assert "| 69.00 | best on val |  | 25 min | cpu |" in softmax


def test_cli_writes_plot_and_errors_cleanly(tmp_path):
    fake_result(str(tmp_path / "a"), "ce", 60.0)
    fake_result(str(tmp_path / "b"), "ce", 62.0, seed=1)  # two seeds: the plot shades their spread
    plot = str(tmp_path / "p.png")
    ok = subprocess.run([sys.executable, "scripts/make_table.py", str(tmp_path), "--plot", plot], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "| ce |" in ok.stdout and os.path.getsize(plot) > 0
    bad = subprocess.run([sys.executable, "scripts/make_table.py", str(tmp_path / "missing")], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "missing" in bad.stderr


def test_gains_pair_seeds_and_sit_beside_the_papers_gain(tmp_path):
    for seed, (ce, ldam) in enumerate(((60.0, 65.0), (62.0, 66.0), (64.0, 70.0))):
        fake_result(str(tmp_path / f"ce{seed}"), "ce", ce, val=ce, seed=seed)
        fake_result(str(tmp_path / f"ldam{seed}"), "ldam_drw", ldam, val=ldam + 1, seed=seed)
    fake_result(str(tmp_path / "ldam9"), "ldam_drw", 90.0, val=90.0, seed=9)  # no CE run of seed 9
    fake_result(str(tmp_path / "bccl_other_arch"), "bccl", 80.0, seed=0)
    results = [json.load(open(p)) for p in make_table.find_results([str(tmp_path)])]
    next(r for r in results if r["label"] == "bccl")["arch"] = "resnet50"  # no CE row on it: no gain row
    table = make_table.build_gains_table(results)
    rows = [line for line in table.splitlines()[2:]]
    # Paired differences 5, 4, 6: mean 5, sample std 1; few and medium move with top-1 here
    # (fake_result sets them to top1 -/+ 1); selected: best on val = top1 + 1 against CE's top1.
    # The paper's gain: 77.03 - 70.36 (Cao et al., Table 2).
    assert rows == ["| cifar10 | 100 | ldam_drw | resnet32 | 3 of 4 | +5.00 ± 1.00 | n/a | +5.00 ± 1.00 | "
                    "+5.00 ± 1.00 | +6.00 ± 1.00 | best on val | +6.67 |"]
    assert make_table.build_gains_table(results[:1]).startswith("No gains")


def test_gains_compare_only_runs_of_the_same_images_and_epochs(tmp_path):
    def run(name, label, top1, epochs, seed=0):
        fake_result(str(tmp_path / name), label, top1, seed=seed)
        with open(tmp_path / name / "config.json", "w") as stream:
            json.dump({"optim": {"epochs": epochs}, "data": {"imb_factor": 0.01}, "method": label}, stream)

    run("ce200", "ce", 60.0, 200)
    run("ldam200", "ldam_drw", 66.0, 200)
    run("bccl30", "bccl", 70.0, 30)  # a short run: no CE of 30 epochs to compare with
    results = [make_table.load_result(p) for p in make_table.find_results([str(tmp_path)])]
    table = make_table.build_gains_table(results)
    assert "| ldam_drw | resnet32 | 1 of 1 | +6.00 |" in table
    assert table.endswith("- bccl (cifar10 r100, resnet32): no gain, no CE row with the same images, epochs and precision")
    run("ce200_again", "ce", 61.0, 200)  # a second CE run of seed 0: which one to pair is ambiguous
    results = [make_table.load_result(p) for p in make_table.find_results([str(tmp_path)])]
    assert "- ldam_drw (cifar10 r100, resnet32): no gain, the CE row has two runs of one seed" in \
        make_table.build_gains_table(results)


def test_by_splits_groups_on_config_fields(tmp_path):
    for name, backend, top1, seed in (("p0", "pil", 60.0, 0), ("p1", "pil", 64.0, 1), ("t0", "tensor", 61.0, 0)):
        fake_result(str(tmp_path / name), "ce", top1, seed=seed)
        with open(tmp_path / name / "config.json", "w") as stream:
            json.dump({"run": {"aug_backend": backend}}, stream)
    results = [make_table.load_result(p, ["run.aug_backend", "run.missing"])
               for p in make_table.find_results([str(tmp_path)])]
    table = make_table.build_table(results, paper=False, by=["run.aug_backend", "run.missing"])
    lines = table.splitlines()
    assert lines[0].startswith("| dataset | ratio | method | arch | run.aug_backend | run.missing | seeds |")
    # pil: mean of 60 and 64 with sample std 2.83; tensor: its single seed; an absent field reads '?'.
    assert "| ce | resnet32 | pil | ? | 2 | 62.00 ± 2.83 |" in table
    assert "| ce | resnet32 | tensor | ? | 1 | 61.00 |" in table
    # From the command line, a field that no run has (a typo) is an error, not a column of '?';
    # a field some runs have, or one whose value is null, is a column.
    code = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_table.py"), str(tmp_path),
                           "--by", "run.aug_backend", "run.agu_backend"], capture_output=True, text=True)
    assert code.returncode == 2 and code.stdout == ""
    assert code.stderr.startswith("make_table.py: error: --by run.agu_backend: no run's config.json has this field;")
    with open(tmp_path / "t0" / "config.json", "w") as stream:
        json.dump({"run": {"aug_backend": "tensor", "note": None}}, stream)
    code = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_table.py"), str(tmp_path),
                           "--by", "run.note"], capture_output=True, text=True)
    assert code.returncode == 0 and "| ce | resnet32 | None | 1 | 61.00 |" in code.stdout
    assert "| ce | resnet32 | ? | 2 | 62.00 ± 2.83 |" in code.stdout


def test_paper_rows_follow_the_labels_the_scripts_produce():
    def row(label, dataset="cifar10", **extra):
        result = {"dataset": dataset, "imb_factor": 0.01, "label": label, "arch": "resnet32",
                  "train_counts": [5000, 50], "last": {"top1": 50.0}, "best_on_test": {"top1": 51.0}, **extra}
        return make_table.build_table([result], paper=True).splitlines()[2]

    # train_LCSL.py's labels carry the augmentation and the selection split.
    assert "| 85.80 |" in row("lcsl_none_selval")
    # The baselines: 100 - the errors of the LDAM-DRW paper (ERM 29.64, LDAM-DRW 22.97, CIFAR-100 57.96).
    assert "| 70.36 |" in row("ce") and "| 77.03 |" in row("ldam_drw")
    assert "| 42.04 |" in row("ldam_drw", dataset="cifar100")
    # Rotation SSP (100 - 26.50 and 100 - 23.47 error); CE(Balanced) on CIFAR is the Resample rule.
    assert "| 73.50 |" in row("ce_ssp") and "| 76.53 |" in row("ce_effective_number_ssp")
    # Pseudo-labelled runs are told apart by rho_U (ratio 50: 100 - 18.36).
    semi = row("ce_semi", imb_factor=0.02, imb_factor_unlabel=0.02, unlabeled_pool="tinyimages")
    assert "| ce_semi_rhoU50 |" in semi and "| 81.64 |" in semi
    # List datasets take the ratio of their counts: ImageNet-LT 1280 / 5, iNaturalist 1000 / 2.
    imagenet = row("crt_ssp", dataset="imagenet_lt", imb_factor=None, train_counts=[1280, 40, 5])
    assert "| imagenet_lt | 256 | crt_ssp |" in imagenet and "| 51.30 |" in imagenet
    inat = row("ce_class_aware_ssp", dataset="inat2018", imb_factor=None, train_counts=[1000, 2])
    assert "| 500 |" in inat and "| 65.90 |" in inat


def test_runs_with_other_recipes_are_never_averaged_as_seeds(tmp_path):
    # Seeds 0 and 1 of the 200-epoch recipe, plus a 3-epoch smoke run of seed 0 under the same label:
    # the smoke run gets its own row, tagged with the field that differs; paths and seeds never split.
    runs = (("s0", 0, 200, 70.0), ("s1", 1, 200, 72.0), ("smoke", 0, 3, 20.0))
    for name, seed, epochs, top1 in runs:
        fake_result(str(tmp_path / name), "ce", top1, seed=seed)
        with open(tmp_path / name / "config.json", "w") as stream:
            json.dump({"optim": {"epochs": epochs, "lr": 0.1}, "git_commit": name,
                       "command": f"python main.py --epochs {epochs} --seed {seed} --out_dir {name}",
                       "run": {"seed": seed, "out_dir": str(tmp_path / name)}}, stream)
    results = [make_table.load_result(p) for p in make_table.find_results([str(tmp_path)])]
    lines = make_table.build_table(results, paper=False).splitlines()
    full = next(line for line in lines if "| ce [optim.epochs=200] |" in line)
    smoke = next(line for line in lines if "| ce [optim.epochs=3] |" in line)
    assert "| 2 | 71.00 ± 1.41 |" in full and "| 1 | 20.00 |" in smoke
    # Without a difference in the recipe the row keeps its plain label.
    plain = make_table.build_table([r for r in results if r["last"]["top1"] != 20.0], paper=False)
    assert "| ce | resnet32 | 2 | 71.00 ± 1.41 |" in plain
    # A second run of seed 0 (the same command again) is counted, and the row says it holds one
    # seed twice rather than three seeds.
    again = {**next(r for r in results if r["last"]["top1"] == 70.0), "last": {"top1": 73.0}}
    twice = make_table.build_table([r for r in results if r["last"]["top1"] != 20.0] + [again], paper=False)
    assert "| ce | resnet32 | 3; seed 0 2 times | 71.67 ± 1.53 |" in twice


def test_a_run_continued_with_more_epochs_is_grouped_by_the_epochs_it_trained(tmp_path):
    # Seed 0 trained 200 epochs; seed 1 was started for 200 and extended to 300, its config.json
    # written before config.json followed such a change. results.json's last epoch says what its
    # numbers measured, so the two are rows of their own; had seed 1 ended at 200, they would pool.
    def run(seed, trained):
        fake_result(str(tmp_path / f"s{seed}"), "ce", 70.0 + seed, seed=seed)
        with open(tmp_path / f"s{seed}" / "results.json") as stream:
            result = json.load(stream)
        result["last"]["epoch"] = trained
        with open(tmp_path / f"s{seed}" / "results.json", "w") as stream:
            json.dump(result, stream)
        with open(tmp_path / f"s{seed}" / "config.json", "w") as stream:
            json.dump({"optim": {"epochs": 200, "lr": 0.1}, "run": {"seed": seed}}, stream)

    def table():
        results = [make_table.load_result(p) for p in make_table.find_results([str(tmp_path)])]
        return make_table.build_table(results, paper=False)

    run(0, 200)
    run(1, 300)
    assert "| ce [optim.epochs=200] | resnet32 | 1 | 70.00 |" in table()
    assert "| ce [optim.epochs=300] | resnet32 | 1 | 71.00 |" in table()
    run(1, 200)
    assert "| ce | resnet32 | 2 | 70.50 ± 0.71 |" in table()


def test_a_run_reached_twice_or_copied_is_counted_once(tmp_path, capsys):
    # The same results.json through a link (runs/latest), through a folder and a run inside it,
    # and a copy of it elsewhere (results/ collected from the run folder): one seed, not three.
    for seed, top1 in ((0, 60.0), (1, 62.0)):
        fake_result(str(tmp_path / "runs" / f"ce{seed}"), "ce", top1, seed=seed)
    os.symlink(str(tmp_path / "runs" / "ce0"), str(tmp_path / "runs" / "latest"))
    os.makedirs(tmp_path / "results" / "ce0")
    shutil.copy(str(tmp_path / "runs" / "ce0" / "results.json"), str(tmp_path / "results" / "ce0"))
    paths = make_table.find_results([str(tmp_path / "runs"), str(tmp_path / "runs" / "ce1"), str(tmp_path / "results")])
    assert sorted(os.path.relpath(p, tmp_path) for p in paths) == [
        "results/ce0/results.json", "runs/ce0/results.json", "runs/ce1/results.json"]
    capsys.readouterr()
    results = make_table.load_results(paths)
    assert "skipped " + str(tmp_path / "runs" / "ce0" / "results.json") in capsys.readouterr().err
    assert "| ce | resnet32 | 2 | 61.00 ± 1.41 |" in make_table.build_table(results, paper=False)
    # Of a run and its copy, the one whose record names the precision is the one counted.
    record = tmp_path / "runs" / "ce1" / "results.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "precision": "bf16"}))
    os.makedirs(tmp_path / "results" / "ce1")
    (tmp_path / "results" / "ce1" / "results.json").write_text(
        json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "precision"}))
    results = make_table.load_results(make_table.find_results([str(tmp_path / "results"), str(tmp_path / "runs")]))
    assert sorted(make_table.precision_name(r) for r in results) == ["bf16", "unrecorded"]
    assert any(r["path"].endswith(os.path.join("runs", "ce1", "results.json")) for r in results)
    # Two runs of one seed in the method's row leave its pairs with CE ambiguous: no gain.
    fake_result(str(tmp_path / "runs" / "ldam0"), "ldam_drw", 65.0, seed=0)
    fake_result(str(tmp_path / "runs" / "ldam0_again"), "ldam_drw", 66.0, seed=0)
    results = make_table.load_results(make_table.find_results([str(tmp_path / "runs")]))
    assert "- ldam_drw (cifar10 r100, resnet32): no gain, this row has two runs of one seed" in \
        make_table.build_gains_table(results)


def test_a_continued_run_and_other_images_are_other_recipes(tmp_path):
    # Seed 0 trained 400 epochs from the start; seed 1 was continued from 200 to 400 (another
    # cosine path); seed 2 is a fresh 400-epoch run again, but on other images per class.
    def run(seed, counts, changes=None):
        fake_result(str(tmp_path / f"s{seed}"), "lcsl", 70.0 + seed, seed=seed)
        record = tmp_path / f"s{seed}" / "results.json"
        result = json.loads(record.read_text())
        result["last"]["epoch"], result["train_counts"] = 400, counts
        record.write_text(json.dumps(result))
        config = {"optim": {"epochs": 400, "cosine": True}, "run": {"seed": seed}}
        if changes:
            config["epochs_changed"] = changes
        (tmp_path / f"s{seed}" / "config.json").write_text(json.dumps(config))

    run(0, [50, 5])
    run(1, [50, 5], [{"from": 200, "to": 400, "after_epoch": 200, "at": "2026-12-07 10:00:00", "command": "x"}])
    run(2, [40, 4])
    results = make_table.load_results(make_table.find_results([str(tmp_path)]))
    lines = make_table.build_table(results, paper=False).splitlines()
    rows = [line for line in lines if "| lcsl" in line]
    assert len(rows) == 3 and any("optim.epochs_changed=[[200, 400, 200]]" in row for row in rows)
    assert any("data.counts=[40, 4]" in row and "| 72.00 |" in row for row in rows)
    # A change that took effect only after the epoch results.json reports (extended, not
    # finished yet) did not shape those numbers: the run is a seed of the plain row.
    run(1, [50, 5], [{"from": 400, "to": 600, "after_epoch": 400}])
    results = make_table.load_results(make_table.find_results([str(tmp_path / "s0"), str(tmp_path / "s1")]))
    assert "| lcsl | resnet32 | 2 | 70.50 ± 0.71 |" in make_table.build_table(results, paper=False)


def test_a_semi_supervised_run_names_a_pool_that_is_not_the_papers(tmp_path):
    # D_U from the leftover CIFAR images is no row of the paper's table (its pool was 80M-TI):
    # its own label, no paper number beside it; the paper's pool keeps the paper's row.
    from datasets.semi import PAPER_POOLS, POOL_KINDS

    assert make_table.PAPER_POOLS == PAPER_POOLS and set(PAPER_POOLS) < set(POOL_KINDS)
    for name, pool, top1 in (("leftover", "leftover", 70.0), ("ti", "tinyimages", 75.0), ("old", None, 72.0)):
        fake_result(str(tmp_path / name), "ce_semi", top1)
        record = tmp_path / name / "results.json"
        result = {**json.loads(record.read_text()), "imb_factor": 0.02, "imb_factor_unlabel": 0.02}
        record.write_text(json.dumps({**result, **({"unlabeled_pool": pool} if pool else {})}))
    results = make_table.load_results(make_table.find_results([str(tmp_path)]))
    table = make_table.build_table(results, paper=True)
    assert "| cifar10 | 50 | ce_semi_leftover_rhoU50 | resnet32 | 1 | 70.00 |" in table
    leftover = next(line for line in table.splitlines() if "ce_semi_leftover_rhoU50" in line)
    assert "| best on TEST |  |" in leftover  # no paper number
    assert "| ce_semi_rhoU50 | resnet32 | 1 | 75.00 |" in table
    # A results.json that does not record its pool (older versions) makes no claim to the paper's.
    unrecorded = next(line for line in table.splitlines() if "ce_semi_unrecorded_rhoU50" in line)
    assert "| 72.00 |" in unrecorded and "| best on TEST |  |" in unrecorded
    assert "| best on TEST | 81.64 |" in next(line for line in table.splitlines() if "| ce_semi_rhoU50 |" in line)


def test_test_time_variants_of_a_run_are_rows_of_their_own(tmp_path, capsys):
    # CE seeds 0 and 1 trained once each, scored also tau-normalised (--tau_norm 1): a row
    # "ce+tau_norm1" beside "ce" (never more seeds of it), no paper number, its gain paired by seed.
    for seed, plain, normalised in ((0, 60.0, 64.0), (1, 62.0, 65.0)):
        fake_result(str(tmp_path / f"ce{seed}"), "ce", plain, val=plain, seed=seed)
        record = tmp_path / f"ce{seed}" / "results.json"
        result = json.loads(record.read_text())
        result["last_tau_norm1"] = {"top1": normalised, "many": None, "medium": None, "few": None}
        record.write_text(json.dumps(result))
    # LCSL's final report scores its selected checkpoint tau-normalised, as train_LCSL.py writes it
    # (no last-epoch variant): the row has that number under the run's selection rule.
    fake_result(str(tmp_path / "lcsl"), "lcsl_none_selval", 70.0, val=69.0)
    record = tmp_path / "lcsl" / "results.json"
    result = json.loads(record.read_text())
    result.update({"selected": {"top1": 69.0}, "selected_tau_norm1.9": {"top1": 72.5, "many": 80.0},
                   "selected_tau_norm1.9_flip_tta": {"top1": "73.1"},  # damaged: skipped, with a warning
                   "selected_checkpoint": {"file": "best.pth", "rule": "r"}, "select_on": "val"})
    record.write_text(json.dumps(result))
    results = make_table.load_results(make_table.find_results([str(tmp_path)]))
    captured = capsys.readouterr().err
    assert "skipped the entry 'selected_tau_norm1.9_flip_tta' of" in captured and "lcsl" in captured
    table = make_table.build_table(results, paper=True)
    assert "| ce | resnet32 | 2 | 61.00 ± 1.41 |" in table
    variant = next(line for line in table.splitlines() if "| ce+tau_norm1 |" in line)
    assert "| 2 | 64.50 ± 0.71 |" in variant and "| n/a | none scored |  |" in variant
    lcsl = [line for line in table.splitlines() if "| lcsl_none_selval+" in line]
    assert len(lcsl) == 1 and "| lcsl_none_selval+tau_norm1.9 | resnet32 | 1 | n/a |" in lcsl[0]
    assert "| 72.50 | best on val |  |" in lcsl[0]  # no paper number beside it
    gains = make_table.build_gains_table(results)
    assert "| ce+tau_norm1 | resnet32 | 2 of 2 | +3.50 ± 0.71 |" in gains
    make_table.plot_per_class(results, str(tmp_path / "plot.png"))  # rows without per-class numbers


def test_seeds_trained_in_other_precisions_are_other_rows(tmp_path):
    # The same flags (--amp auto) became bf16 on one CPU and fp32 on another: results.json records
    # it (newer runs) or log.txt names it (older ones); a run with neither is 'unrecorded'.
    for name, seed, top1 in (("bf16", 0, 70.0), ("fp32_log", 1, 66.0), ("unknown", 2, 68.0)):
        fake_result(str(tmp_path / name), "ce", top1, seed=seed, hardware="AMD EPYC (1 thread)")
        with open(tmp_path / name / "config.json", "w") as stream:
            json.dump({"optim": {"epochs": 200}, "run": {"seed": seed, "amp": "auto"}}, stream)
    record = tmp_path / "bf16" / "results.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "precision": "bf16"}))
    (tmp_path / "fp32_log" / "log.txt").write_text(
        "2026-12-06 23:36:56 device: cpu, AMD EPYC (1 thread) (world size 1); precision: none (--amp auto); "
        "channels_last: True\n")
    results = [make_table.load_result(p) for p in make_table.find_results([str(tmp_path)])]
    assert sorted(str(r["precision"]) for r in results) == ["None", "bf16", "none"]
    lines = make_table.build_table(results, paper=False).splitlines()
    assert '| ce [precision="bf16"] | resnet32 | 1 | 70.00 |' in next(line for line in lines if "bf16" in line)
    fp32 = next(line for line in lines if '[precision="fp32"]' in line)
    assert "| 1 | 66.00 |" in fp32 and fp32.endswith("| AMD EPYC (1 thread), fp32 |")
    unknown = next(line for line in lines if '[precision="unrecorded"]' in line)
    assert unknown.endswith("| AMD EPYC (1 thread) |")
    # --amp none asked for fp32 outright: a seed of the fp32 row, though its flag differs.
    fake_result(str(tmp_path / "none"), "ce", 64.0, seed=3, hardware="AMD EPYC (1 thread)")
    with open(tmp_path / "none" / "config.json", "w") as stream:
        json.dump({"optim": {"epochs": 200}, "run": {"seed": 3, "amp": "none"}}, stream)
    results = [make_table.load_result(p) for p in make_table.find_results([str(tmp_path)])]
    fp32 = next(line for line in make_table.build_table(results, paper=False).splitlines() if "fp32" in line)
    assert "| 2 | 65.00 ± 1.41 |" in fp32


def test_a_gain_is_never_measured_across_precisions(tmp_path):
    # CE trained in bf16, LDAM-DRW in fp32 (same data, same epochs): no comparable CE row.
    for name, label, top1, precision in (("ce", "ce", 60.0, "bf16"), ("ldam", "ldam_drw", 65.0, "none")):
        fake_result(str(tmp_path / name), label, top1, val=top1)
        record = tmp_path / name / "results.json"
        record.write_text(json.dumps({**json.loads(record.read_text()), "precision": precision}))
        with open(tmp_path / name / "config.json", "w") as stream:
            json.dump({"optim": {"epochs": 200}, "data": {"imb_factor": 0.01}, "run": {"seed": 0}}, stream)
    results = [make_table.load_result(p) for p in make_table.find_results([str(tmp_path)])]
    gains = make_table.build_gains_table(results)
    assert gains.startswith("No gains")
    assert "ldam_drw (cifar10 r100, resnet32): no gain, no CE row with the same images, epochs and precision" in gains


def test_pooled_precisions_share_a_row_and_pair_seeds_within_a_precision(tmp_path):
    # Seeds 0 and 1 of CE trained in bf16, seed 2 in fp32; LDAM-DRW's seed 1 ran in fp32, so it
    # has no CE partner of its precision and the gain pairs seeds 0 and 2 only: +5 and +6.
    runs = (("ce", 0, 60.0, "bf16"), ("ce", 1, 62.0, "bf16"), ("ce", 2, 64.0, "none"),
            ("ldam_drw", 0, 65.0, "bf16"), ("ldam_drw", 1, 66.0, "none"), ("ldam_drw", 2, 70.0, "none"))
    for label, seed, top1, precision in runs:
        folder = tmp_path / f"{label}{seed}"
        fake_result(str(folder), label, top1, val=top1, seed=seed, hardware="AMD EPYC (1 thread)")
        record = folder / "results.json"
        record.write_text(json.dumps({**json.loads(record.read_text()), "precision": precision}))
        with open(folder / "config.json", "w") as stream:
            json.dump({"optim": {"epochs": 200}, "data": {"imb_factor": 0.01}, "run": {"seed": seed}}, stream)
    paths = make_table.find_results([str(tmp_path)])
    pooled = make_table.load_results(paths, pool_precisions=True)
    lines = make_table.build_table(pooled, paper=False).splitlines()
    ce = next(line for line in lines if "| ce |" in line)
    # 60, 62, 64: mean 62, sample std 2; both precisions named in the hardware column.
    assert "| ce | resnet32 | 3 (bf16 2, fp32 1) | 62.00 ± 2.00 |" in ce
    assert ce.endswith("| AMD EPYC (1 thread), bf16/AMD EPYC (1 thread), fp32 |")
    assert "| ldam_drw | resnet32 | 3 (bf16 1, fp32 2) | 67.00 ± 2.65 |" in next(line for line in lines
                                                                               if "| ldam_drw |" in line)
    gain = next(line for line in make_table.build_gains_table(pooled).splitlines() if "| ldam_drw |" in line)
    # (5 + 6) / 2 = 5.50, sample std of (5, 6) = 0.71.
    assert "| 2 of 3 | +5.50 ± 0.71 |" in gain
    # Without pooling each precision is its own row, as before.
    separate = make_table.build_table(make_table.load_results(paths), paper=False)
    assert '| ce [precision="bf16"] | resnet32 | 2 | 61.00 ± 1.41 |' in separate
    assert '| ce [precision="fp32"] | resnet32 | 1 | 64.00 |' in separate
    cli = subprocess.run([sys.executable, "scripts/make_table.py", str(tmp_path), "--gains", "--pool_precisions"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and "| 2 of 3 | +5.50 ± 0.71 |" in cli.stdout
    # CE seed 1 again in fp32: one seed in two precisions is no duplicate; it pairs with LDAM-DRW's
    # fp32 seed 1 (66 - 63 = +3), so the gain has three pairs: 5, 3, 6.
    folder = tmp_path / "ce1_fp32"
    fake_result(str(folder), "ce", 63.0, val=63.0, seed=1, hardware="AMD EPYC (1 thread)")
    record = folder / "results.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "precision": "none"}))
    with open(folder / "config.json", "w") as stream:
        json.dump({"optim": {"epochs": 200}, "data": {"imb_factor": 0.01}, "run": {"seed": 1}}, stream)
    pooled = make_table.load_results(make_table.find_results([str(tmp_path)]), pool_precisions=True)
    gain = next(line for line in make_table.build_gains_table(pooled).splitlines() if "| ldam_drw |" in line)
    assert "| 3 of 3 | +4.67 ± 1.53 |" in gain


def test_seeds_of_real_runs_started_from_the_command_line_share_a_row(cifar10_root, tmp_path, monkeypatch):
    # Everything a real run writes into config.json beside its configuration (the commit, the
    # command line that names its seed and folder) must not split seeds into rows of their own.
    import main as main_script
    from utils.runner import run_training

    for seed in (0, 1):
        argv = ["--dataset", "cifar10", "--data_root", cifar10_root.root, "--imb_factor", "0.1", "--method", "ce",
                "--epochs", "1", "-b", "16", "--limit_batches", "2", "--workers", "0", "--progress", "False",
                "--download", "False", "--seed", str(seed), "--out_dir", str(tmp_path / "runs" / f"s{seed}")]
        monkeypatch.setattr(sys, "argv", ["main.py", *argv])
        config, label = main_script.build_config(main_script.get_args_parser().parse_args(argv))
        run_training(config, label)
        with open(tmp_path / "runs" / f"s{seed}" / "config.json") as stream:
            assert f"--seed {seed}" in json.load(stream)["command"]
    results = [make_table.load_result(p) for p in make_table.find_results([str(tmp_path / "runs")])]
    rows = [line for line in make_table.build_table(results, paper=False).splitlines() if "| ce" in line]
    assert len(rows) == 1 and "| ce | resnet32 | 2 |" in rows[0]


def test_a_table_piped_into_a_reader_that_stops_ends_quietly(tmp_path):
    # `make_table.py runs | head -1`: the reader is gone before the table is written. The script
    # must end without a BrokenPipeError traceback (killed by SIGPIPE, as command-line tools are).
    fake_result(str(tmp_path / "a"), "ce", 60.0)
    (tmp_path / "a" / "per_class.csv").write_text("epoch,statistic,class_0,class_1\n1,lcsl/teacher_labels,3,1\n")
    for script in ("scripts/make_table.py", "scripts/per_class_stats.py"):
        shown = subprocess.run([sys.executable, script, str(tmp_path / "a")], cwd=ROOT, capture_output=True,
                               text=True, timeout=60)
        assert shown.returncode == 0 and "|" in shown.stdout  # a table, the write the closed pipe refuses
        reader_gone = subprocess.Popen([sys.executable, script, str(tmp_path / "a")], cwd=ROOT, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
        reader_gone.stdout.close()  # before the interpreter has even started: the write must fail
        _, stderr = reader_gone.communicate(timeout=60)
        assert b"Traceback" not in stderr and b"BrokenPipe" not in stderr, (script, stderr)


def test_readme_evidence_tables_are_what_make_table_prints_from_the_committed_results(capsys):
    # README quotes the evidence tables under the command that rebuilds them from results/; a
    # re-collected run or a change in make_table must show up here, not as a stale table.
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    commands = [line for line in readme.splitlines() if line.startswith("python scripts/make_table.py results/")]
    assert commands, "README shows no make_table.py command over results/"
    for command in commands:
        block_end = readme.index("```", readme.index(command)) + len("```")
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            assert make_table.main(command.split()[2:]) == 0
        finally:
            os.chdir(cwd)
        printed = capsys.readouterr().out.strip()
        assert "| cifar10 |" in printed
        quoted = readme[block_end:block_end + len(printed) + 4]
        assert quoted == "\n\n" + printed + "\n\n", f"README's tables under `{command}` differ from what it prints"


def test_hardware_column_drops_trademarks_and_filler_words():
    assert make_table.hardware({"hardware": "Intel(R) Xeon(R) Processor (1 thread)", "precision": "bf16"}) \
        == "Intel Xeon (1 thread), bf16"
    assert make_table.hardware({"hardware": "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz (2 threads)"}) \
        == "Intel Core i7-8700 @ 3.20GHz (2 threads)"
    assert make_table.hardware({"hardware": "1 x NVIDIA H100 80GB HBM3"}) == "1 x NVIDIA H100 80GB HBM3"

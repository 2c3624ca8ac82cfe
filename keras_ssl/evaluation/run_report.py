"""The report of a finished run: what `keras-ssl-evaluate` does, callable from code.

    from keras_ssl.evaluation.run_report import evaluate_run
    results, table, plots = evaluate_run("runs/simclr_fashion_mnist")

It reads the run's files (`config.json`, `model.keras`, `encoder.keras`) and its
dataset (or another one), refuses a diverged or collapsed model, runs the
evaluations the method declares (`keras_ssl.evaluation.method_evaluations`; on an
unlabelled dataset the label-free ones and the clusters report of
`keras_ssl.evaluation.unlabelled`), and writes `evaluation.json` and the plots in
the run directory (`request.output_dir`).
"""

import os
import re


def evaluate_run(model_dir, request=None, dataset=None, data_dir=None):
    """`(results, printed table, {plot name: path})` of the finished run in `model_dir`; `request` an
    `EvaluationRequest` (default: plots and report in `model_dir`); `dataset`/`data_dir`
    evaluate on another dataset than the run's."""
    from keras_ssl.evaluation.method_evaluations import EvaluationContext, evaluation
    from keras_ssl.evaluation.report import write_json_atomic
    from keras_ssl.evaluation.request import EvaluationRequest
    from keras_ssl.health import check_model, check_representation
    from keras_ssl.run_directory import finished_run
    from keras_ssl.saving import load_model
    from keras_ssl.run_setup import check_modality, encoder_label, run_modality

    request = request or EvaluationRequest(output_dir=model_dir)
    config, encoder_path = finished_run(model_dir)
    model = load_model(os.path.join(model_dir, "model.keras"))
    # Refuse a diverged or collapsed model before computing anything (its figures would mislead).
    check_model(model, f"the model in {model_dir}")
    modality = run_modality(config)
    modality.check_request(request)  # e.g. a grid reading asked of an audio run
    # as the kept model takes it (an image run is evaluated at the size its encoder kept)
    dataset = modality.load_run_dataset(config, dataset, data_dir, modality.serving_input_shape(config, model_dir))
    check_modality(config, dataset)  # an image run given a folder of WAVs: one line, not a traceback
    results = {"method": config.method, "encoder": encoder_label(config, getattr(model, "encoder", None)),
               "epochs": config.epochs}
    spread, even = check_representation(model.predict(modality.examples(dataset.test.take(1000)), verbose=0),
                                        f"the model in {model_dir}")
    results["representation_spread"] = spread / even  # 1 = evenly spread; see keras_ssl.health
    context = EvaluationContext(model, dataset, config, request.output_dir, request)
    declared = [evaluation(name) for name in config.method_spec.evaluations]
    ran = [e for e in declared if dataset.labelled or not e.needs_labels]
    for e in ran:
        results.update(e.function(context))
    main = None  # the evaluation whose own table is printed (the probe's)
    if dataset.labelled:
        main = next((e for e in ran if e.table is not None), None)
        table = main.table(context, results) if main else _plain_table(results)
    else:  # no probe or kNN: the method's own metrics, clusters (and for images a neighbour grid)
        from keras_ssl.evaluation.unlabelled import evaluate_unlabelled, format_unlabelled_table

        results.update(evaluate_unlabelled(model, load_model(encoder_path), dataset, config, request.output_dir,
                                           plot=request.plot, extra=results, write_report=False))
        table = format_unlabelled_table(results)
    table = _with_declared_rows(table, [e for e in ran if e is not main], results)
    if request.output_dir:
        os.makedirs(request.output_dir, exist_ok=True)
        write_json_atomic(os.path.join(request.output_dir, "evaluation.json"), results)
    plot_keys = [key for e in ran for key in e.plots] + ([] if dataset.labelled else ["embedding_plot",
                                                                                       "neighbours_plot"])
    return results, table, {key: results[key] for key in plot_keys if results.get(key)}


def _with_declared_rows(table, ran, results):
    """`table` (two columns, as `format_table` writes them) with rows added for the
    number-valued report keys the evaluations that ran declare and it does not show
    yet (a VAE's bits/dim, a codebook's perplexity), laid out again as one table."""
    lines = table.splitlines()
    if len(lines) < 2 or not set(lines[1]) <= {"-"}:
        return table  # not a two-column table (e.g. the audio probes' own layout)
    rows = [tuple(re.split(r"\s{2,}", line.strip(), maxsplit=1)) for line in lines[:1] + lines[2:] if line.strip()]
    # the table shows knn_accuracy as knn_accuracy_k20, and threshold as "threshold (units)"
    shown = {name.split(" (")[0] for name, _ in rows} | {"knn_accuracy"}
    added = []
    for declared in ran:
        for key in declared.report_keys:
            value = results.get(key)
            if key in shown or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            text = f"{100 * value:.2f}%" if key.endswith("accuracy") else f"{value:.6g}" if isinstance(value, float) \
                else str(value)
            added.append((key, text))
            shown.add(key)
    if not added:
        return table
    from keras_ssl.evaluation.report import layout

    return layout(rows + added)


def _plain_table(results):
    from keras_ssl.evaluation.report import format_table

    return format_table(results)

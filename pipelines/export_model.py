"""``keras-mnv2 export --model FILE.keras | --preset NAME [--calibration-images DIR]``: any
keras_mnv2 model (a ``.keras`` file, an official model by name or a local official file,
``keras_mnv2.presets``) into ``.tflite`` files, with its own class names in the TFLite metadata.
The run form, ``keras-mnv2 export <job>``, is ``pipelines.jobs.deploy.run_export``."""

from pathlib import Path

from keras_mnv2.errors import InputError


def default_out_dir(source):
    """Beside a ``.keras`` file; ``runs/<preset>/tflite`` for a preset or an official file."""
    from keras_mnv2.presets import short_name

    if str(source).endswith(".keras"):
        return Path(source).resolve().parent
    return Path("runs") / short_name(source) / "tflite"


def export_model(source, modes=None, calibration_images=None, out_dir=None, io_dtype="float32",
                 metadata="auto", quantizer="converter", num_calibration_images=100):
    """Writes ``out_dir/<model>_<mode>.tflite`` for each of ``modes`` (default float32, and int8
    with ``calibration_images``, a folder of photos like those the model will see); returns
    {mode: ExportReport}."""
    from keras_mnv2 import presets
    from keras_mnv2.deploy import export
    from keras_mnv2.deploy.calibration import images_from_folder

    modes = tuple(modes or (("float32", "int8") if calibration_images else ("float32",)))
    for mode in modes:
        if mode not in export.MODES or mode == "qat":
            raise InputError(f"export mode must be one of float32, float16, dynamic, int8, got "
                             f"{mode!r}")
    if "int8" in modes and not calibration_images:
        raise InputError("int8 needs --calibration-images DIR: a folder of photos like those "
                         f"the model will see (the first {num_calibration_images} are used)")
    model = presets.load(source)
    name = presets.short_name(source)
    data = None
    if calibration_images:
        data = images_from_folder(calibration_images, model.input_shape[1:3],
                                  num_calibration_images)
    out_dir = Path(out_dir or default_out_dir(source))
    reports = {}
    for mode in modes:
        int8 = mode == "int8"
        report = export.export_tflite(
            model, out_dir / f"{name}_{mode}.tflite", mode=mode,
            representative_data=data if int8 else None,
            io_dtype=io_dtype if int8 else "float32", metadata=metadata,
            quantizer=quantizer if int8 else "converter",
            num_calibration_images=num_calibration_images)
        print(report.summary(), flush=True)
        reports[mode] = report
    return reports

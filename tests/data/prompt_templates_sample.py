# A small hand-written file of the same shape as BiomedCoOp's trainers/prompt_templates.py:
# module-level dict literals, a per-data-set template dict and the class -> descriptions dict.
# The importer must never run this file (the import below would fail, the call would write).
import this_module_does_not_exist  # noqa: F401

open("/tmp/medadapt-prompt-templates-was-executed", "w").write("executed")

CUSTOM_TEMPLATES = {
    "BTMRI": "a MRI photo of a {}.",
    "BUSI": "a ultrasound photo of a {}.",
}

BIOMEDCOOP_TEMPLATES = {
    "glioma tumor": [
        "A brain MRI showing an infiltrative mass with irregular margins.",
        "An MR image of a glioma with surrounding "
        "edema and mass effect.",   # implicit concatenation, as in the real file
    ],
    "normal brain": [
        "A brain MRI with   normal anatomy and no mass.",
        "An MR image showing symmetric ventricles.",
    ],
    "benign tumor": ["An ultrasound of a well-circumscribed oval mass."],
    "normal brain": [  # duplicate key: Python keeps this one
        "A normal brain MRI without lesions.",
        "An MR image of a healthy brain.",
    ],
}

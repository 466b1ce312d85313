"""Forms (Flask-WTF: every one carries a CSRF token)."""

from __future__ import annotations

from typing import Any

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import (
    DateField,
    FloatField,
    IntegerField,
    PasswordField,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import (
    DataRequired,
    EqualTo,
    Length,
    NumberRange,
    Optional,
    Regexp,
    ValidationError,
)

from bcd_node.db.models import Role, Stage, StudyStatus
from bcd_node.records.users import MIN_PASSWORD_LENGTH
from bcd_node.records.verification import MAX_AMENDMENT_REASON, MAX_COMMENT, Decision

#: The values of the worklist's filters and the verification's stage (the node's enums).
STAGES: tuple[str, ...] = tuple(stage.value for stage in Stage)
STATUSES: tuple[str, ...] = tuple(status.value for status in StudyStatus)
EMAIL = Regexp(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", message="Not an e-mail address.")
USERNAME = Regexp(r"^[a-z0-9][a-z0-9._-]{1,63}$",
                  message="2-64 lower-case letters, digits, '.', '_' or '-'")


def _choices(*pairs: tuple[str, str]) -> list[SelectChoice]:
    return [SelectChoice(value, label) for value, label in pairs]


ROLES = _choices(*((role.value, role.value) for role in (Role.DOCTOR, Role.ADMIN)))


class LoginForm(FlaskForm):
    """Sign in."""

    username = StringField("User name", validators=[DataRequired(), Length(max=64)],
                           render_kw={"autocomplete": "username", "autofocus": True})
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)],
                             render_kw={"autocomplete": "current-password"})


class RegisterForm(FlaskForm):
    """A doctor's request for an account."""

    username = StringField("User name", validators=[DataRequired(), USERNAME],
                           render_kw={"autocomplete": "username"})
    full_name = StringField("Full name", validators=[DataRequired(), Length(max=128)])
    email = StringField("Hospital e-mail", validators=[DataRequired(), EMAIL,
                                                      Length(max=254)])
    password = PasswordField("Password", validators=[
        DataRequired(), Length(min=MIN_PASSWORD_LENGTH, max=256)],
        render_kw={"autocomplete": "new-password"})
    confirm = PasswordField("Repeat password", validators=[
        DataRequired(), EqualTo("password", message="The passwords differ.")],
        render_kw={"autocomplete": "new-password"})


class PasswordChangeForm(FlaskForm):
    """A user changes their own password."""

    current = PasswordField("Current password", validators=[DataRequired(), Length(max=256)],
                            render_kw={"autocomplete": "current-password"})
    password = PasswordField("New password", validators=[
        DataRequired(), Length(min=MIN_PASSWORD_LENGTH, max=256)],
        render_kw={"autocomplete": "new-password"})
    confirm = PasswordField("Repeat new password", validators=[
        DataRequired(), EqualTo("password", message="The passwords differ.")],
        render_kw={"autocomplete": "new-password"})


class ActionForm(FlaskForm):
    """A button that only needs its CSRF token (approve, disable, revoke, retry...)."""


def one_line_break(text: str | None) -> str | None:
    """Line breaks as LF: browsers send a textarea's as CRLF, which its ``maxlength`` counts as
    one character; so does the length check, and LF is stored."""
    return None if text is None else text.replace("\r\n", "\n").replace("\r", "\n")


class VerifyForm(FlaskForm):
    """A doctor's verification of one result."""

    decision = SelectField("Decision",
                           choices=_choices((Decision.ACCEPT.value, "Accept the AI's stage"),
                                            (Decision.CORRECT.value, "Correct the stage")),
                           validators=[DataRequired()])
    stage = SelectField("Corrected stage", choices=_choices(("", "—"), *((s, s) for s in STAGES)),
                        validators=[Optional()])
    comment = TextAreaField("Comment", validators=[Length(max=MAX_COMMENT)],
                            filters=[one_line_break])

    def validate(self, extra_validators: Any = None) -> bool:
        """A correction names a stage (checked here: the field itself is optional)."""
        ok = super().validate(extra_validators)
        if ok and self.decision.data == Decision.CORRECT and not self.stage.data:
            self.stage.errors = ["Choose the corrected stage."]
            return False
        return ok


def _not_in_future(_form: FlaskForm, field: DateField) -> None:
    import datetime as _dt
    if field.data and field.data > _dt.date.today():
        raise ValidationError("The birth date is in the future.")


class UploadForm(FlaskForm):
    """An image uploaded by a doctor with the patient's details."""

    image = FileField("Image (PNG, JPEG or DICOM)", validators=[FileRequired("Choose a file.")])
    # Required for PNG/JPEG (checked by the view): a DICOM file brings its own.
    patient_name = StringField("Patient name", validators=[Optional(), Length(max=128)],
                               description="Family name, given name")
    patient_id = StringField("Patient ID", validators=[
        Optional(), Length(max=64),
        Regexp(r"^[A-Za-z0-9._\-/]+$", message="Letters, digits, '.', '_', '-' or '/'.")])
    birth_date = DateField("Birth date", validators=[Optional(), _not_in_future])
    age = IntegerField("or age (years)", validators=[Optional(), NumberRange(min=0, max=130)])
    sex = SelectField("Sex", choices=_choices(("", "unknown"), ("F", "female"), ("M", "male"),
                                         ("O", "other")), validators=[Optional()])
    accession_number = StringField("Accession number", validators=[Optional(), Length(max=16)])
    description = StringField("Description", validators=[Optional(), Length(max=64)])
    specimen_id = StringField("Slide (specimen) ID", validators=[Optional(), Length(max=64)],
                              description="Makes it a VL Microscopic Image")
    stain = StringField("Stain", validators=[Optional(), Length(max=64)],
                        description="e.g. May-Grünwald-Giemsa")
    # PNG/JPEG only (a DICOM file states its own); prefilled by the view with
    # [model] default_um_per_pixel. Empty: unknown, and the result says "scale unknown".
    um_per_pixel = FloatField("Pixel size (µm)", validators=[
        Optional(), NumberRange(min=0.02, max=50)],
        description="Of the camera at this objective; empty if unknown")


class UserCreateForm(FlaskForm):
    """An admin creates an account."""

    username = StringField("User name", validators=[DataRequired(), USERNAME])
    full_name = StringField("Full name", validators=[Optional(), Length(max=128)])
    email = StringField("E-mail", validators=[Optional(), EMAIL])
    role = SelectField("Role", choices=ROLES)
    password = PasswordField("Initial password", validators=[
        DataRequired(), Length(min=MIN_PASSWORD_LENGTH, max=256)])


class RoleForm(FlaskForm):
    """Change a user's role."""

    role = SelectField("Role", choices=ROLES)


class FullNameForm(FlaskForm):
    """Change a user's full name (the name on the reports a doctor signs)."""

    full_name = StringField("Full name", validators=[Length(max=128)])


class TokenForm(FlaskForm):
    """Issue an API token."""

    name = StringField("Token name", validators=[DataRequired(), Length(max=64)],
                       description="What it is for, e.g. 'PACS reporting script'")


class SignCaseForm(VerifyForm):
    """A doctor's signature of a case: accept the AI's case stage, or correct it."""

    decision = SelectField("Case stage",
                           choices=_choices((Decision.ACCEPT.value, "Accept the AI's stage"),
                                            (Decision.CORRECT.value, "Correct the stage")),
                           validators=[DataRequired()], default=Decision.ACCEPT.value)


class AmendCaseForm(SignCaseForm):
    """A doctor's amendment of a signed case: the stage, a comment and why it is amended."""

    reason = TextAreaField("Reason for the amendment",
                           validators=[DataRequired("Give the reason for the amendment."),
                                       Length(max=MAX_AMENDMENT_REASON)],
                           filters=[one_line_break])

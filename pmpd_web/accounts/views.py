"""A user's own account pages: API tokens and the password. Per user, never per cohort: a user
sees and revokes only their own tokens (another user's token is 404)."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse_lazy
from django.utils import timezone
from django.views.decorators.http import require_POST

from .audit import record
from .models import ApiToken, AuditAction
from .tokens import create_token


class TokenForm(forms.Form):
    name = forms.CharField(max_length=80, help_text="What the token is for, e.g. 'notebook'")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        most = settings.PMPD_API_TOKEN_MAX_DAYS
        self.fields["days"] = forms.IntegerField(
            label="Valid for (days)",
            min_value=1,
            max_value=most,
            initial=min(30, most),
            help_text=f"The key stops working after this many days (at most {most}).",
        )


@login_required
def api_tokens(request):
    form = TokenForm(request.POST or None)
    new_key = None
    if request.method == "POST" and form.is_valid():
        made = create_token(
            request.user, name=form.cleaned_data["name"], days=form.cleaned_data["days"]
        )
        record(request.user, AuditAction.CREATE_API_TOKEN, label=str(made.token))
        new_key = made.key
        form = TokenForm()
    tokens = ApiToken.objects.filter(user=request.user)
    return render(
        request,
        "accounts/api_tokens.html",
        {"form": form, "tokens": tokens, "new_key": new_key, "now": timezone.now()},
    )


@login_required
@require_POST
def revoke_api_token(request, token_id: int):
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user)
    label = str(token)
    token.delete()
    record(request.user, AuditAction.REVOKE_API_TOKEN, label=label)
    messages.success(request, f"Token {label} revoked: it no longer works.")
    return redirect("api-tokens")


class PasswordChangeView(auth_views.PasswordChangeView):
    """Django's page; saving the new password revokes the user's API tokens (accounts.signals)
    and keeps this session logged in."""

    template_name = "accounts/password_change.html"
    success_url = reverse_lazy("api-tokens")

    def form_valid(self, form):
        response = super().form_valid(form)
        messages.success(
            self.request, "Password changed. Your API tokens were revoked: make new ones here."
        )
        return response

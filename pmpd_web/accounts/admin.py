from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from .lockout import unlock
from .models import ApiToken, AuditEvent, Membership


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "cohort", "role", "created_at")
    list_filter = ("role", "cohort")
    search_fields = ("user__username", "cohort__name")
    autocomplete_fields = ("user",)


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Readable by site admins, editable by nobody."""

    list_display = ("at", "username", "action", "cohort_id", "patient_id", "object_label")
    list_filter = ("action",)
    search_fields = ("username", "object_label")
    date_hierarchy = "at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_actions(self, request):
        return {}


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Site admins see and revoke (delete) tokens; they make them with
    ``manage.py create_api_token``, which prints the key once."""

    list_display = ("name", "user", "key_prefix", "created_at", "expires_at", "last_used_at")
    search_fields = ("user__username", "name", "key_prefix")
    readonly_fields = ("user", "name", "key_prefix", "created_at", "expires_at", "last_used_at")
    exclude = ("key_digest",)

    def has_add_permission(self, request):
        return False


@admin.action(description="Unlock logins (clear failed-login lockouts)")
def unlock_logins(modeladmin, request, queryset):
    usernames = list(queryset.values_list(get_user_model().USERNAME_FIELD, flat=True))
    unlock(by=request.user, usernames=usernames)
    modeladmin.message_user(request, f"Unlocked: {', '.join(usernames)}.", messages.SUCCESS)


class PlatformUserAdmin(UserAdmin):
    actions = [*UserAdmin.actions, unlock_logins]


admin.site.unregister(get_user_model())
admin.site.register(get_user_model(), PlatformUserAdmin)

from django.contrib import admin

from .models import AuditEvent, Membership


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

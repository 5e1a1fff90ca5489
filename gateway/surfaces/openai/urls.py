"""/v1 routes, mounted under /api/openai/v1/ and its alias /v1/ (see writingmate.urls)."""

from django.urls import path, re_path

from gateway.surfaces.openai import views

api_patterns = [
    path("models", views.ModelsView.as_view(), name="models"),
    # Model ids contain "/": match the rest of the path, whether the slash came literal or as %2F.
    re_path(r"^models/(?P<model_id>.+)$", views.ModelView.as_view(), name="model"),
    path("chat/completions", views.ChatCompletionsView.as_view(), name="chat-completions"),
    path("completions", views.CompletionsView.as_view(), name="completions"),
    path("responses", views.ResponsesView.as_view(), name="responses"),
    path("responses/compact", views.ResponsesCompactView.as_view(), name="responses-compact"),  # before responses/<id>
    path("responses/<str:response_id>", views.ResponseView.as_view(), name="response"),
    path(
        "responses/<str:response_id>/input_items", views.ResponseInputItemsView.as_view(), name="response-input-items"
    ),
    path("audio/transcriptions", views.TranscriptionsView.as_view(), name="audio-transcriptions"),
]

"""/v1 routes, mounted under /api/openai/v1/ and its alias /v1/ (see writingmate.urls)."""

from django.urls import path, re_path

from gateway.surfaces.openai import views

api_patterns = [
    path("models", views.models_list, name="models"),
    # Model ids contain "/": match the rest of the path, whether the slash came literal or as %2F.
    re_path(r"^models/(?P<model_id>.+)$", views.models_retrieve, name="model"),
    path("chat/completions", views.chat_completions, name="chat-completions"),
    path("completions", views.completions, name="completions"),
    path("responses", views.responses, name="responses"),
    path("responses/compact", views.responses_compact, name="responses-compact"),  # before responses/<id>
    path("responses/<str:response_id>", views.response_detail, name="response"),
    path("responses/<str:response_id>/input_items", views.response_input_items, name="response-input-items"),
    path("audio/transcriptions", views.audio_transcriptions, name="audio-transcriptions"),
]

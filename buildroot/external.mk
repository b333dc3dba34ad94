include $(sort $(wildcard $(BR2_EXTERNAL_IOT_HSM_PATH)/package/*/*.mk))
